"""``BURST_TRANSIENT_RESULT_RETENTION``: how long transient calls' outputs and records are
kept; from the duplicate window (120 s) to ``BURST_RESULT_RETENTION``, else no service
starts, and the error names the value."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from burst_core.bus.topology import TRANSIENT_RETENTION, Topology, check_transient_retention
from burst_core.settings import CommonSettings, load
from burst_gateway.settings import GatewaySettings
from burst_scheduler.settings import SchedulerSettings


def test_the_default_is_ten_minutes_and_goes_to_the_topology() -> None:
    s = load(GatewaySettings, env={})
    assert s.transient_result_retention == TRANSIENT_RETENTION == 600.0
    topo = s.topology()
    assert topo.transient_retention == 600.0 and topo.result_retention == 7 * 86400
    assert Topology().transient_retention == 600.0
    s = load(GatewaySettings, env={"BURST_TRANSIENT_RESULT_RETENTION": "900",
                                   "BURST_RESULT_RETENTION": "3600"})
    assert s.topology().transient_retention == 900.0


@pytest.mark.parametrize(("env", "shown"), [
    ({"BURST_TRANSIENT_RESULT_RETENTION": "60"}, "=60.0"),
    ({"BURST_TRANSIENT_RESULT_RETENTION": "-1"}, "=-1.0"),
    ({"BURST_TRANSIENT_RESULT_RETENTION": "nan"}, "=nan"),
    ({"BURST_TRANSIENT_RESULT_RETENTION": "7200", "BURST_RESULT_RETENTION": "3600"}, "=7200.0"),
    # The default (600 s) above a shorter result retention: set both.
    ({"BURST_RESULT_RETENTION": "300"}, "=600.0"),
])
@pytest.mark.parametrize("cls", [CommonSettings, GatewaySettings, SchedulerSettings])
def test_a_bad_value_is_refused_naming_it(env: dict[str, str], shown: str,
                                          cls: type[CommonSettings]) -> None:
    with pytest.raises(ValueError, match="BURST_TRANSIENT_RESULT_RETENTION") as e:
        load(cls, env=env)
    assert shown in str(e.value) and "BURST_RESULT_RETENTION" in str(e.value)
    assert "120" in str(e.value)


def test_the_bounds_themselves_are_allowed() -> None:
    assert check_transient_retention(120.0, 3600.0) == 120.0
    assert check_transient_retention(3600.0, 3600.0) == 3600.0
    with pytest.raises(ValueError):
        check_transient_retention(119.9, 3600.0)


def test_a_service_refuses_to_start() -> None:
    env = {**os.environ, "BURST_TRANSIENT_RESULT_RETENTION": "30",
           "BURST_NATS_URL": "nats://127.0.0.1:1"}
    proc = subprocess.run([sys.executable, "-m", "burst_scheduler"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "BURST_TRANSIENT_RESULT_RETENTION=30.0" in proc.stderr, proc.stderr[-2000:]
