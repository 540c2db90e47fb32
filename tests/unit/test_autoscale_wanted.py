"""How many containers a function with new work gets: floor, saturation, buffer, cap."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from burst_core.schemas import (
    Allocation,
    ContainerView,
    DeploymentRecord,
    FunctionSpec,
    Resources,
)
from burst_scheduler.autoscale import Autoscaler
from burst_scheduler.state import Container, FunctionRef


def ref(**spec: object) -> FunctionRef:
    fs = FunctionSpec(name="f", module="m", qualname="f", **spec)  # type: ignore[arg-type]
    dep = DeploymentRecord(workspace="w", app="a", deployment_id="d", bundle_hash="h",
                           functions=[fs], created_at=0.0)
    return FunctionRef(fn_key="w.a.f", deployment=dep, spec=fs)


def container(i: int, state: str, in_flight: int = 0, max_inputs: int = 1) -> Container:
    view = ContainerView(container_id=f"ct-{i}", fn_key="w.a.f", state=state,  # type: ignore[arg-type]
                         in_flight=in_flight, max_inputs=max_inputs,
                         idle_since=1.0 if state == "idle" else None)
    return Container(container_id=f"ct-{i}", agent_id="ag",
                     allocation=Allocation(fn_key="w.a.f", resources=Resources()), view=view)


def wanted(r: FunctionRef, cs: list[Container]) -> int:
    scaler = SimpleNamespace(state=SimpleNamespace(agents={}), _stops={},
                             settings=SimpleNamespace(stop_order_retry=5.0))
    scaler.stopping = lambda c, now: Autoscaler.stopping(scaler, c, now)  # type: ignore[attr-defined]
    scaler.saturated = Autoscaler.saturated  # type: ignore[attr-defined]
    return Autoscaler.wanted(scaler, r, cs, 10.0)  # type: ignore[arg-type]


def test_first_container_and_saturation() -> None:
    assert wanted(ref(), []) == 1
    assert wanted(ref(), [container(1, "idle")]) == 0
    assert wanted(ref(), [container(1, "busy", 1)]) == 1
    assert wanted(ref(max_inputs=4), [container(1, "busy", 2, 4)]) == 0


def test_buffer_containers_stay_ready_under_load() -> None:
    assert wanted(ref(buffer_containers=2), []) == 3  # one for the work, two spare
    busy = [container(1, "busy", 1), container(2, "busy", 1)]
    assert wanted(ref(buffer_containers=2), busy) == 3
    # The idle one takes the new work: two more keep the buffer.
    assert wanted(ref(buffer_containers=2), busy + [container(3, "idle")]) == 2
    spare = [container(3, "idle"), container(4, "idle")]
    assert wanted(ref(buffer_containers=1), busy + spare) == 0


def test_max_containers_caps_everything() -> None:
    assert wanted(ref(buffer_containers=5, max_containers=2), []) == 2
    assert wanted(ref(max_containers=1), [container(1, "busy", 1)]) == 0


def test_target_inputs_scale_out_before_max_inputs() -> None:
    half_full = [container(1, "busy", 2, 4)]
    assert wanted(ref(max_inputs=4, target_inputs=2), half_full) == 1
    assert wanted(ref(max_inputs=4), half_full) == 0  # no target: scale at max_inputs


def test_failed_starts_back_off_and_a_ready_container_resets() -> None:
    from burst_core.schemas import ContainerReady, ContainerStopped

    woken: list[bool] = []
    scaler = SimpleNamespace(_start_failures={}, _failed_deployment={},
                             on_backlog=lambda: woken.append(True),
                             state=SimpleNamespace(function=lambda key: None),
                             settings=SimpleNamespace(start_backoff_initial=1.0,
                                                      start_backoff_max=8.0))

    def fail(at: float) -> None:
        ev = ContainerStopped(container_id="ct", agent_id="ag", workspace="w", app="a",
                              function="f", reason="failed_to_start", at=at)
        Autoscaler.on_container_event(scaler, ev)  # type: ignore[arg-type]

    left = lambda now: Autoscaler.backoff_left(scaler, "w.a.f", now)  # type: ignore[arg-type]  # noqa: E731
    assert left(0.0) == 0.0
    fail(100.0)
    assert left(100.5) == 0.5  # 1 s after the first failure
    fail(101.0)
    assert left(102.0) == 1.0  # 2 s after the second
    for t in (103.0, 104.0, 105.0, 106.0):
        fail(t)
    assert left(106.0) == 8.0  # capped
    ok = ContainerReady(container_id="ct2", agent_id="ag", fn_key="w.a.f", at=107.0)
    Autoscaler.on_container_event(scaler, ok)  # type: ignore[arg-type]
    assert left(107.0) == 0.0
    assert len(woken) == 6  # each failed start woke the reconcile pass
    crashed = ContainerStopped(container_id="ct3", agent_id="ag", workspace="w", app="a",
                               function="f", reason="crashed", at=108.0, inputs_running=1)
    Autoscaler.on_container_event(scaler, crashed)  # type: ignore[arg-type]
    assert left(108.0) == 0.0  # a crash with an input running is the input's failure
    assert len(woken) == 7  # its input may need another container: looked at now


def test_containers_crashing_idle_back_off_as_failed_starts() -> None:
    """A container that dies with no input running, again and again, is a crash loop:
    placed again only after a growing delay (poison inputs, each crashing the container
    running it, are paced by their own retries instead)."""
    from burst_core.schemas import ContainerStopped

    scaler = SimpleNamespace(_start_failures={}, _failed_deployment={}, on_backlog=None,
                             state=SimpleNamespace(function=lambda key: None),
                             settings=SimpleNamespace(start_backoff_initial=1.0,
                                                      start_backoff_max=8.0))

    def stopped(at: float, reason: str, inputs: int = 0) -> None:
        ev = ContainerStopped(container_id="ct", agent_id="ag", workspace="w", app="a",
                              function="f", reason=reason, at=at, inputs_running=inputs)
        Autoscaler.on_container_event(scaler, ev)  # type: ignore[arg-type]

    left = lambda now: Autoscaler.backoff_left(scaler, "w.a.f", now)  # type: ignore[arg-type]  # noqa: E731
    for t in range(5):
        stopped(100.0 + t, "crashed", inputs=1)
    stopped(105.0, "scaledown")
    assert left(105.0) == 0.0
    stopped(110.0, "crashed")
    assert left(110.0) == 1.0
    stopped(111.0, "oom")
    assert left(111.0) == 2.0


def test_start_failures_to_fail_calls_must_be_at_least_one() -> None:
    from burst_scheduler.settings import SchedulerSettings

    assert SchedulerSettings(start_failures_to_fail_calls=1).start_failures_to_fail_calls == 1
    with pytest.raises(ValueError, match="BURST_START_FAILURES_TO_FAIL_CALLS=0 must be at "
                                         "least 1"):
        SchedulerSettings(start_failures_to_fail_calls=0)
