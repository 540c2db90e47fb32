"""The SDK's map pump (``Function._map_pump``): a thread submits inputs and fetches results
as they finish, whatever the pace of the loop over them; at most ``MAP_MAX_OUTSTANDING``
inputs in flight or fetched and not yet taken; in a copy of the caller's context; its
errors raised in the caller's thread. Against a stand-in client (no cluster)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from burst import _context, wire
from burst._serialization import deserialize, serialize
from burst.functions import MAP_MAX_OUTSTANDING, Function


class FakeClient:
    """Answers each call at once with its argument doubled."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.lock = threading.Lock()
        self.submitted = 0
        self.pending: list[tuple[str, int]] = []
        self.transient: set[bool] = set()
        self.contexts: set[str] = set()
        self.threads: set[str] = set()
        self.fail_after = fail_after

    def call_batch(self, app: str, fn: str, payloads: list[bytes],
                   traceparent: str = "", transient: bool = False) -> list[wire.CallRef]:
        self.transient.add(transient)
        self.contexts.add(_context.current_call.get())
        self.threads.add(threading.current_thread().name)
        refs = []
        with self.lock:
            for p in payloads:
                (args, _kwargs) = deserialize(p)
                call_id = f"fc-{self.submitted:032x}"
                self.pending.append((call_id, args[0]))
                self.submitted += 1
                refs.append(wire.CallRef(call_id=call_id, attempt_token="t"))
        if self.fail_after is not None and self.submitted > self.fail_after:
            raise ConnectionError("the gateway went away")
        return refs

    def wait_calls(self, refs: list[wire.CallRef], wait: float,
                   linger: float = 0.0) -> list[wire.CallResponse]:
        with self.lock:
            done, self.pending = self.pending, []
        return [wire.CallResponse(call_id=c, status="success", payload=serialize(2 * x))
                for c, x in done]


def _fn(client: FakeClient) -> Function[..., Any]:
    fn: Function[..., Any] = Function(lambda x: x, None, wire.FunctionSpec(
        name="double", module="m", qualname="double"))
    fn._app_name, fn._client = "app", client  # type: ignore[assignment]
    return fn


def test_results_come_in_order_from_a_thread_in_the_callers_context() -> None:
    client = FakeClient()
    token = _context.current_call.set("fc-parent")
    try:
        got = list(_fn(client).map(range(2500)))
    finally:
        _context.current_call.reset(token)
    assert got == [2 * i for i in range(2500)]
    assert client.transient == {True}  # the map's inputs are transient
    assert client.contexts == {"fc-parent"}  # a map from a container keeps its parent
    assert client.threads == {"burst-map-double"}


def test_at_most_the_limit_is_in_flight_or_fetched_and_not_taken() -> None:
    client = FakeClient()
    results = _fn(client).map(range(3 * MAP_MAX_OUTSTANDING))
    assert next(results) == 0
    time.sleep(0.5)  # the loop is busy: the pump fetches, up to the limit
    assert client.submitted == MAP_MAX_OUTSTANDING + 1  # (the first was taken)
    taken = 1 + sum(1 for _ in zip(range(10), results, strict=False))
    time.sleep(0.5)
    assert client.submitted - taken <= MAP_MAX_OUTSTANDING
    assert list(results) == [2 * i for i in range(taken, 3 * MAP_MAX_OUTSTANDING)]


def test_the_pumps_errors_are_raised_in_the_callers_thread() -> None:
    def inputs() -> Any:
        yield 1
        raise KeyError("bad input")

    with pytest.raises(KeyError, match="bad input"):
        list(_fn(FakeClient()).map(inputs()))
    with pytest.raises(ConnectionError, match="went away"):
        list(_fn(FakeClient(fail_after=300)).map(range(600)))
