"""The local cluster's supervisor (burst._supervisor) on stand-in parts: real processes, no
servers."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from burst import _supervisor
from burst._cluster import Launcher
from burst._parts import (
    ClusterState,
    Part,
    all_procs,
    is_alive,
    members,
    read_state,
    stop_parts,
    write_state,
)
from burst._supervisor import SupervisorSettings
from burst.exception import InvalidError, UnavailableError
from tests.waiting import eventually

FAST = SupervisorSettings(backoff=0.2, backoff_max=5.0, interval=0.05)


def test_settings_from_the_environment() -> None:
    assert SupervisorSettings.from_env({}) == SupervisorSettings()
    assert SupervisorSettings.from_env({"BURST_SUPERVISE": "0"}).enabled is False
    got = SupervisorSettings.from_env({"BURST_SUPERVISE": "yes", "BURST_SUPERVISE_BACKOFF": "0.1",
                                       "BURST_SUPERVISE_BACKOFF_MAX": "2"})
    assert (got.enabled, got.backoff, got.backoff_max) == (True, 0.1, 2.0)
    assert SupervisorSettings().credential_check_interval == 30.0
    assert SupervisorSettings.from_env({"BURST_CREDENTIAL_CHECK_INTERVAL": "0.5"}) \
        .credential_check_interval == 0.5


@pytest.mark.parametrize(("env", "message"), [
    ({"BURST_SUPERVISE": "maybe"}, "invalid BURST_SUPERVISE='maybe': use 1"),
    ({"BURST_SUPERVISE_BACKOFF": "soon"}, "invalid BURST_SUPERVISE_BACKOFF='soon': use a number"),
    ({"BURST_SUPERVISE_BACKOFF": "-1"}, "invalid BURST_SUPERVISE_BACKOFF='-1'"),
    ({"BURST_SUPERVISE_BACKOFF_MAX": "inf"}, "invalid BURST_SUPERVISE_BACKOFF_MAX='inf'"),
    ({"BURST_SUPERVISE_INTERVAL": "0"}, "invalid BURST_SUPERVISE_INTERVAL='0'"),
    ({"BURST_CREDENTIAL_CHECK_INTERVAL": "never"},
     "invalid BURST_CREDENTIAL_CHECK_INTERVAL='never': use a number of seconds above 0"),
    ({"BURST_SUPERVISE_BACKOFF": "5", "BURST_SUPERVISE_BACKOFF_MAX": "1"},
     "BURST_SUPERVISE_BACKOFF_MAX=1: it must be at least BURST_SUPERVISE_BACKOFF (5)"),
])
def test_bad_settings_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidError) as e:
        SupervisorSettings.from_env(env)
    assert message in str(e.value)


def test_backoff_doubles_up_to_its_maximum() -> None:
    s = SupervisorSettings(backoff=0.5, backoff_max=3.0)
    assert [s.delay(n) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert s.delay(10_000) == 3.0


def _recorded(home: Path, name: str) -> Part:
    state = read_state(home)
    assert state is not None
    found = state.part(name)
    assert found is not None
    return found


def test_a_part_that_exits_is_restarted_and_stop_leaves_none_behind(tmp_path: Path) -> None:
    launcher = Launcher(tmp_path)
    env = {"PATH": os.environ["PATH"]}
    launcher.start("plain", ["sleep", "60"], env)
    # A part that started a process of its own, in its group: it goes with the part.
    launcher.start("parent", ["sh", "-c", "sleep 60 & exec sleep 61"], env)
    write_state(tmp_path, ClusterState(home=str(tmp_path), url="", started_at=time.time(),
                                       parts=launcher.parts))
    sup = _supervisor.start(tmp_path, FAST, launcher.commands)
    everything: list[Part] = []
    try:
        assert is_alive(sup.pid, sup.started) and sup.pgid == sup.pid
        first = _recorded(tmp_path, "plain")
        os.kill(first.pid, signal.SIGKILL)
        second = eventually(lambda: (p := _recorded(tmp_path, "plain")).restarts == 1 and p, 10,
                            "the part is restarted")
        assert second.pid != first.pid and second.pgid == second.pid
        assert is_alive(second.pid, second.started)
        assert second.last_exit == "exited"  # `burst up` started it: its status is not ours
        # Its own child now: how it exits is known. A quick exit doubles the wait.
        os.kill(second.pid, signal.SIGKILL)
        third = eventually(lambda: (p := _recorded(tmp_path, "plain")).restarts == 2 and p, 10,
                           "the part is restarted again")
        assert third.last_exit == "killed by SIGKILL"
        log = Path(third.log).read_text()
        assert "restarted by burst's supervisor" in log and "(restart 2)" in log
        sup_log = (tmp_path / "logs" / "supervisor.log").read_text()
        assert "restarting it in 0.2 s" in sup_log and "restarting it in 0.4 s" in sup_log

        parent = _recorded(tmp_path, "parent")
        [child] = [p for p in members(parent, all_procs()) if p.pid != parent.pid]
        os.kill(parent.pid, signal.SIGKILL)
        eventually(lambda: _recorded(tmp_path, "parent").restarts == 1, 10,
                   "the parent part is restarted")
        assert not is_alive(child.pid, child.started)  # killed with its dead part
    finally:
        state = read_state(tmp_path)
        assert state is not None
        state = _supervisor.stop(tmp_path, state)
        everything = state.parts
        stop_parts(everything)
        launcher.stop_all()
    assert not is_alive(sup.pid, sup.started)
    assert {p.name for p in everything} == {"plain", "parent"}  # all of them recorded
    assert not any(is_alive(p.pid, p.started) for p in everything)
    assert "stopping: the parts are left to `burst down`" in \
        (tmp_path / "logs" / "supervisor.log").read_text()


def test_a_part_whose_port_was_taken_keeps_it_and_says_so(tmp_path: Path) -> None:
    import socket

    launcher = Launcher(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        # The part "listened" on that port; once it is gone, another process binds it.
        launcher.start("gateway", ["sleep", "60"], {"PATH": os.environ["PATH"]}, http=port)
        write_state(tmp_path, ClusterState(home=str(tmp_path), url="", started_at=time.time(),
                                           parts=launcher.parts))
        sup = _supervisor.start(tmp_path, FAST, launcher.commands)
        try:
            holder.listen()
            os.kill(_recorded(tmp_path, "gateway").pid, signal.SIGKILL)
            part = eventually(lambda: (p := _recorded(tmp_path, "gateway")).restarts >= 1 and p,
                              10, "the part is restarted")
            assert f"(port {port} taken by another process)" in part.last_exit
            assert part.ports == {"http": port}  # restarted on the port its clients know
            log = (tmp_path / "logs" / "supervisor.log").read_text()
            assert f"gateway keeps its port {port}, which another process holds now" in log
        finally:
            state = read_state(tmp_path)
            assert state is not None
            stop_parts(_supervisor.stop(tmp_path, state).parts)
            launcher.stop_all()
    assert not is_alive(sup.pid, sup.started)


def test_a_supervisor_that_cannot_start_says_why(tmp_path: Path) -> None:
    with pytest.raises(UnavailableError, match="the supervisor exited with status 1") as e:
        _supervisor.start(tmp_path, FAST, {})  # no cluster.json to supervise
    assert "cluster.json is gone" in "".join(e.value.__notes__)
