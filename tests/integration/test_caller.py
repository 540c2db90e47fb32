"""burst_core's Caller on a real nats-server: calls made for a parent (from a container)
record it, list as its children and form the call graph; cancelling a call cancels its
running children; the relay refuses a waited-on call whose slots its ancestors hold."""

from __future__ import annotations

import time

import pytest

from burst import wire
from burst.exception import DeadlockError, InvalidError, NotFoundError
from burst_agent.api_relay import answer, check_deadlock
from burst_core import bus, names
from burst_core.calls.caller import Caller, Parent
from burst_core.schemas import DeploymentRecord, InputDecoder, Output, encode

pytestmark = pytest.mark.integration

WS = "ws"


def _dep(max_containers: int | None = None, max_inputs: int = 1) -> DeploymentRecord:
    fns = [wire.FunctionSpec(name=n, module="m", qualname=n, max_containers=max_containers,
                             max_inputs=max_inputs) for n in ("root", "leaf")]
    return DeploymentRecord(workspace=WS, app="tree", deployment_id="d1", bundle_hash="h",
                            functions=fns, created_at=time.time())


async def _caller(js) -> Caller:  # type: ignore[no-untyped-def]
    dep = _dep()

    async def deployments(workspace: str, app: str) -> DeploymentRecord | None:
        return dep if (workspace, app) == (WS, "tree") else None

    c = Caller(bus.client_of(js), js, deployments, max_sync_wait=5.0, signal_interval=0.0)
    await c.start()
    return c


async def _answer(js, rec) -> None:  # type: ignore[no-untyped-def]
    out = Output(call_id=rec.call_id, input_id=rec.input_id, attempt=1,
                 attempt_token=rec.attempt_token, status="success", payload=b"x", workspace=WS)
    await bus.publish(js, names.output_subject(rec.call_id, 1), encode(out),
                      msg_id=f"{rec.input_id}:1")


async def test_children_form_the_graph_and_are_cancelled_with_their_parent(js) -> None:  # type: ignore[no-untyped-def]
    c = await _caller(js)
    try:
        dep = await c.function(WS, "tree", "root")
        [(root, _)] = await c.submit(WS, dep, "root", [b"r"], register=False)
        parent = Parent(root.call_id, [names.function_key(WS, "tree", "root")])
        kids = await c.submit(WS, dep, "leaf", [b"a", b"b"], register=False, parent=parent)
        [(late, _)] = await c.submit(WS, dep, "leaf", [b"c"], register=False, parent=parent)
        child_ids = [rec.call_id for rec, _ in kids] + [late.call_id]
        assert await c.children(root.call_id) == child_ids
        for rec, _ in kids:
            stored = await c.record(rec.call_id, WS)
            assert stored is not None and stored.parent_call_id == root.call_id
        await _answer(js, kids[0][0])
        # From any node, the graph starts at the root.
        g = await c.graph(WS, late.call_id)
        assert g["call_id"] == root.call_id and g["function_name"] == "root"
        assert g["status"] == "pending"
        assert [(n["call_id"], n["function_name"], n["status"]) for n in g["children"]] == [
            (child_ids[0], "leaf", "success"), (child_ids[1], "leaf", "pending"),
            (child_ids[2], "leaf", "pending")]
        # Another workspace sees none of it.
        with pytest.raises(NotFoundError):
            await c.graph("other", root.call_id)
        # Cancelling the parent cancels its children that had not finished.
        assert (await c.cancel(WS, root.call_id))["cancelled"] is True
        g = await c.graph(WS, root.call_id)
        assert g["status"] == "terminated"
        assert [n["status"] for n in g["children"]] == ["success", "terminated", "terminated"]
    finally:
        await c.stop()


def test_a_waited_call_is_refused_when_its_ancestors_hold_every_slot() -> None:
    fn_key = names.function_key(WS, "tree", "leaf")
    other = names.function_key(WS, "tree", "root")
    one = _dep(max_containers=1)
    check_deadlock(one, "leaf", None)  # a client's call: never refused
    check_deadlock(one, "leaf", Parent("fc-p", [other]))  # its slot is free
    with pytest.raises(DeadlockError, match="max_containers=1"):
        check_deadlock(one, "leaf", Parent("fc-p", [other, fn_key]))
    two = _dep(max_containers=1, max_inputs=2)  # two slots: one ancestor leaves one free
    check_deadlock(two, "leaf", Parent("fc-p", [fn_key]))
    with pytest.raises(DeadlockError):
        check_deadlock(two, "leaf", Parent("fc-p", [fn_key, other, fn_key]))
    check_deadlock(_dep(), "leaf", Parent("fc-p", [fn_key] * 50))  # no max_containers


async def test_the_relay_answers_the_sdks_requests_and_refuses_others(js) -> None:  # type: ignore[no-untyped-def]
    c = await _caller(js)
    try:
        body = wire.encode(wire.CallBatchRequest(payloads=[b"a", b"b"]))
        parent = Parent("fc-" + "0" * 32, [names.function_key(WS, "tree", "root")])
        resp = await answer(c, WS, parent, wire.ApiRequest(
            method="POST", path="/v1/apps/tree/functions/leaf/calls/batch", body=body))
        assert resp.status == 202
        refs = wire.call_batch_response_decoder.decode(resp.body).calls
        assert await c.children(parent.call_id) == [r.call_id for r in refs]
        with pytest.raises(InvalidError, match="GET /v1/apps is not available inside"):
            await answer(c, WS, None, wire.ApiRequest(method="GET", path="/v1/apps"))
        with pytest.raises(NotFoundError, match="'nope'"):
            await answer(c, WS, None, wire.ApiRequest(
                method="POST", path="/v1/apps/nope/functions/leaf/calls", body=body))
    finally:
        await c.stop()


async def test_a_spawned_call_starts_a_new_lineage_and_a_waited_one_is_checked(js) -> None:  # type: ignore[no-untyped-def]
    c = await _caller(js)
    capped = _dep(max_containers=1)

    async def deployments(workspace: str, app: str) -> DeploymentRecord | None:
        return capped

    c.deployments = deployments
    leaf = names.function_key(WS, "tree", "leaf")
    parent = Parent("fc-" + "1" * 32, [leaf])  # a leaf call, waited on by nobody else
    body = wire.encode(wire.CallRequest(payload=b"x"))
    path = "/v1/apps/tree/functions/leaf/calls"
    try:
        with pytest.raises(DeadlockError):  # .remote(): its only slot is the parent's
            await answer(c, WS, parent, wire.ApiRequest(method="POST", path=path, body=body,
                                                        params={"wait": "5"}))
        resp = await answer(c, WS, parent, wire.ApiRequest(method="POST", path=path,
                                                           body=body, params={"wait": "0"}))
        assert resp.status == 202  # .spawn(): the parent may finish and free the slot
        raw = await js.get_last_msg(names.STREAM_INPUTS, names.input_subject(leaf))
        inp = InputDecoder.decode(raw.data)
        assert inp.parent_call_id == parent.call_id and inp.lineage == []
    finally:
        await c.stop()


async def test_the_recheck_finds_older_calls_outputs_in_both_streams(js) -> None:  # type: ignore[no-untyped-def]
    """Calls older than the waiting process (made and answered before it started): their
    outputs are looked up where their ids say (a map's transient inputs, a spawned call)."""
    first = await _caller(js)
    try:
        dep = await first.function(WS, "tree", "leaf")
        [(full, _)] = await first.submit(WS, dep, "leaf", [b"a"], register=False)
        [(part, _)] = await first.submit(WS, dep, "leaf", [b"b"], register=False,
                                         transient=True)
    finally:
        await first.stop()
    assert names.is_transient_call(part.call_id) and not names.is_transient_call(full.call_id)
    for rec in (full, part):
        await _answer(js, rec)
    c = await _caller(js)  # started after the outputs: its router never saw them
    try:
        assert c.outputs.recent(part.call_id) is None
        refs = [wire.CallRef(call_id=r.call_id, attempt_token=r.attempt_token)
                for r in (full, part)]
        got = await c.wait_many(WS, refs, wait=5.0)
        assert sorted((r.call_id, r.status) for r in got) == sorted(
            [(full.call_id, "success"), (part.call_id, "success")])
        # Polled by id (the record found in its bucket, the output in its stream).
        for rec in (full, part):
            found = await c.record(rec.call_id, WS)
            assert found is not None
            assert (await c.result_of(found, 0.0)).status == "success"
    finally:
        await c.stop()
