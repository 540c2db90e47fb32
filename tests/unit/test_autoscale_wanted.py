"""How many containers a function with new work gets: floor, saturation, buffer, cap."""

from __future__ import annotations

from types import SimpleNamespace

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
