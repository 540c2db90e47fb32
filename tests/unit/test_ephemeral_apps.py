"""An ephemeral run of app X, where it goes by X: budgets (scheduler), the ledger, ids."""

from __future__ import annotations

import time

import pytest

from burst import wire
from burst.exception import InvalidError
from burst.functions import Function
from burst.wire import FunctionSpec, Resources
from burst_core import ledger, names
from burst_core.ledger import Rates
from burst_core.schemas import BudgetState, DeploymentRecord, LedgerSnapshot, MeteringRecord
from burst_scheduler.budget_stop import BudgetStop
from burst_scheduler.state import ClusterState

RUN = "ap-" + "0" * 16


def run_of(name: str) -> DeploymentRecord:
    return DeploymentRecord(workspace="ws", app=RUN, deployment_id="dp-1", bundle_hash="b" * 64,
                            functions=[FunctionSpec(name="f", module="m", qualname="f")],
                            created_at=time.time(), ephemeral=True, name=name,
                            client_id="cl-" + "1" * 16)


def test_a_hard_budget_on_the_app_blocks_its_runs_containers() -> None:
    state = ClusterState(heartbeat_timeout=10.0)
    state.apply_deployment(names.deployment_key("ws", RUN), run_of("shop"))
    stop = BudgetStop(None, state)
    run_fn = names.function_key("ws", RUN, "f")
    assert not stop.blocked(run_fn)
    stop.exceeded[names.budget_key("ws", "shop")] = BudgetState(
        workspace="ws", scope="shop", period="2026-12", limit=1.0, hard=True, exceeded=True)
    assert stop.blocked(run_fn)
    assert stop.blocked(names.function_key("ws", "shop", "f"))  # the deployed app too
    assert not stop.blocked(names.function_key("ws", "other", "f"))


def test_a_runs_usage_is_booked_under_its_app_and_marked_ephemeral() -> None:
    snap = LedgerSnapshot()
    rates = Rates(cpu_core_second=0.001, memory_gib_second=0.0)
    for i, app_id in enumerate(("", RUN)):
        rec = MeteringRecord(container_id=f"c{i}", interval=0, start=1000.0, end=1010.0,
                             workspace="ws", app="shop", function="f", agent_id="a",
                             resources=Resources(cpu=1.0, memory_mb=0), app_id=app_id)
        ledger.apply(snap, i + 1, rec, rates)
    [row] = ledger.report(snap, "ws", by="app")
    assert row["app"] == "shop" and row["seconds"] == 20.0
    assert row["ephemeral_seconds"] == 10.0
    assert row["ephemeral_cost"] == pytest.approx(row["cost"] / 2)


def test_app_ids_and_client_ids() -> None:
    assert wire.is_app_id(RUN) and not wire.is_app_id("shop")
    assert wire.check_client_id("cl-" + "a" * 16)
    with pytest.raises(ValueError, match="invalid client id 'cl-x'"):
        wire.check_client_id("cl-x")
    with pytest.raises(InvalidError, match="ephemeral app's id"):
        Function.from_name(RUN, "f")
