"""User retries with backoff, fresh timeouts per attempt, and the attempt record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.test_hello import write_app

pytestmark = pytest.mark.e2e


def test_retries_backoff_and_fresh_timeouts(cluster: Cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path, """
        import json, os, time
        import burst

        app = burst.App("retrying")
        attempts = {"flaky": 0, "broken": 0}

        @app.function(max_containers=1,
                      retries=burst.Retries(max_retries=3, initial_delay=0.3,
                                            backoff_coefficient=2))
        def flaky():
            attempts["flaky"] += 1
            if attempts["flaky"] < 3:
                raise RuntimeError(f"attempt {attempts['flaky']} fails")
            return attempts["flaky"]

        @app.function(max_containers=1, retries=burst.Retries(max_retries=2, initial_delay=0.1))
        def broken():
            attempts["broken"] += 1
            raise ValueError(f"broken on attempt {attempts['broken']}")

        @app.function(timeout=1, retries=burst.Retries(max_retries=1, initial_delay=0.1))
        def slow():
            time.sleep(2.5)
            return "never"

        @app.function()
        def no_retries():
            raise KeyError("once")

        @app.local_entrypoint()
        def main():
            out = {}
            t0 = time.time()
            out["flaky"] = flaky.remote()
            out["flaky_s"] = time.time() - t0
            try:
                broken.remote()
            except ValueError as e:
                out["broken"] = str(e)
            t0 = time.time()
            call = slow.spawn()
            try:
                call.get()
            except burst.exception.FunctionTimeoutError as e:
                out["slow"] = str(e)
            out["slow_s"] = time.time() - t0
            out["slow_call"] = call.object_id
            try:
                no_retries.remote()
            except KeyError as e:
                out["no_retries"] = repr(e)
            print(json.dumps(out))
    """)
    proc = cluster.burst("run", str(app), check=True, timeout=120)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["flaky"] == 3
    assert out["flaky_s"] >= 0.3 + 0.6  # two backoffs: 0.3 s, then 0.6 s
    assert out["broken"] == "broken on attempt 3"  # the last attempt's error reaches the caller
    assert "timed out after 1 s" in out["slow"]
    # Two attempts of 1 s each (each with a fresh timeout), not one 2.5 s run.
    assert 2.0 <= out["slow_s"] < 2.5 + 8
    assert out["no_retries"] == "KeyError('once')"
    record = _call_record(cluster, out["slow_call"])
    assert record["attempt"] == 2 and record["user_failures"] == 1
    assert record.get("internal_retries", 0) == 0


def _call_record(cluster: Cluster, call_id: str) -> dict:
    import asyncio

    import msgspec
    import nats

    from burst_core import names
    from tests.e2e.test_hello import _nats_url

    async def get() -> bytes:
        nc = await nats.connect(_nats_url(cluster))
        kv = await nc.jetstream().key_value(names.calls_bucket(call_id))
        value = (await kv.get(call_id)).value
        await nc.close()
        return value

    return msgspec.msgpack.decode(asyncio.run(get()))
