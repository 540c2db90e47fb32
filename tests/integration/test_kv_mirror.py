"""bus.KVMirror against a real nats-server."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from burst_core import bus
from tests.servers import Server
from tests.waiting import eventually_async

pytestmark = pytest.mark.integration

BUCKET = "mirror_test"


class Rec(msgspec.Struct):
    n: int
    hot: bool = False


DEC = msgspec.msgpack.Decoder(Rec)


def enc(n: int, hot: bool = False) -> bytes:
    return msgspec.msgpack.encode(Rec(n, hot))


def _ns(mirror: bus.KVMirror[Rec]) -> dict[str, int]:
    return {k: v.n for k, v in mirror.items.items()}


async def test_mirror_follows_puts_updates_deletes_and_purges(js) -> None:  # type: ignore[no-untyped-def]
    kv = await bus.ensure_kv(js, BUCKET)
    await kv.put("before", enc(1))
    changes: list[tuple[str, int | None, int | None]] = []

    async def on_change(c: bus.KVChange[Rec]) -> None:
        changes.append((c.key, c.value.n if c.value else None,
                        c.previous.n if c.previous else None))

    m = bus.KVMirror(js, BUCKET, DEC, on_change=on_change)
    await m.start(timeout=10)
    try:
        assert _ns(m) == {"before": 1}  # the current entries are there once started
        await kv.put("a", enc(2))
        await kv.put("a", enc(3))
        await kv.put("b", enc(4))
        await eventually_async(lambda: _ns(m) == {"before": 1, "a": 3, "b": 4}, 10, "puts")
        await kv.delete("a")
        await kv.purge("before")
        await eventually_async(lambda: _ns(m) == {"b": 4}, 10, "delete and purge")
        assert m.get("b") == Rec(4) and "a" not in m and len(m) == 1
        assert changes == [("before", 1, None), ("a", 2, None), ("a", 3, 2), ("b", 4, None),
                           ("a", None, 3), ("before", None, 1)]
    finally:
        await m.stop()


async def test_a_bad_value_is_logged_and_skipped(js, capsys) -> None:  # type: ignore[no-untyped-def]
    kv = await bus.ensure_kv(js, BUCKET)
    m = bus.KVMirror(js, BUCKET, DEC, what="rec")
    await m.start(timeout=10)
    try:
        await kv.put("k", enc(1))
        await eventually_async(lambda: _ns(m) == {"k": 1}, 10, "the first value")
        await kv.put("k", b"\xc1not msgpack")
        await kv.put("j", b"\xc1")
        await kv.put("z", enc(9))  # after the bad ones: they were passed, not stuck on
        await eventually_async(lambda: "z" in m, 10, "the value after the bad ones")
        assert _ns(m) == {"k": 1, "z": 9}  # k keeps what it had, j never came in
        out = capsys.readouterr()
        assert "rec_undecodable" in out.out + out.err and "mirror_test" in out.out + out.err
    finally:
        await m.stop()


async def test_keep_and_a_failing_callback(js) -> None:  # type: ignore[no-untyped-def]
    kv = await bus.ensure_kv(js, BUCKET)
    calls: list[str] = []

    def on_change(c: bus.KVChange[Rec]) -> None:
        calls.append(c.key)
        raise RuntimeError("boom")  # logged; the mirror goes on

    m = bus.KVMirror(js, BUCKET, DEC, keep=lambda r: r.hot, on_change=on_change)
    await m.start(timeout=10)
    try:
        await kv.put("cold", enc(1))
        await kv.put("hot", enc(2, hot=True))
        await eventually_async(lambda: "hot" in m, 10, "the kept value")
        await kv.put("hot", enc(3))  # no longer kept: leaves the mirror
        await eventually_async(lambda: "hot" not in m, 10, "the value no longer kept")
        assert "cold" not in m and calls == ["hot", "hot"]
    finally:
        await m.stop()


async def test_mirror_follows_again_after_a_server_restart(nats_server: Server) -> None:
    nc = await bus.connect(nats_server.url, "test-mirror")
    try:
        js = nc.jetstream()
        kv = await bus.ensure_kv(js, BUCKET)
        await kv.put("a", enc(1))
        m = bus.KVMirror(js, BUCKET, DEC, retry_delay=0.2)
        await m.start(timeout=10)
        await asyncio.to_thread(nats_server.restart, kill=True)
        await eventually_async(lambda: nc.is_connected, 30, "reconnected")
        for _ in range(50):  # JetStream may still be loading its streams
            try:
                await kv.put("a", enc(2))
                await kv.put("b", enc(3))
                await kv.delete("a")
                break
            except Exception:
                await asyncio.sleep(0.2)
        await eventually_async(lambda: _ns(m) == {"b": 3}, 15, "changes after the restart")
        await m.stop()
    finally:
        await nc.close()


async def test_a_rewatch_drops_keys_deleted_while_away(js) -> None:  # type: ignore[no-untyped-def]
    kv = await bus.ensure_kv(js, BUCKET)
    await kv.put("stays", enc(1))
    await kv.put("goes", enc(2))
    gone: list[str] = []
    m = bus.KVMirror(js, BUCKET, DEC, retry_delay=1.0,
                     on_change=lambda c: gone.append(c.key) if c.value is None else None)
    await m.start(timeout=10)
    try:
        assert _ns(m) == {"stays": 1, "goes": 2}
        watcher = m._watcher
        await watcher.stop()  # the watch ends (as when it fails): the mirror starts over
        await kv.delete("goes")
        await kv.purge_deletes(olderthan=-1)  # no tombstone left for the replay to show
        await eventually_async(lambda: "goes" not in m, 10, "the key deleted while away")
        assert _ns(m) == {"stays": 1} and gone == ["goes"] and m._watcher is not watcher
    finally:
        await m.stop()


async def test_loaded_means_every_key_is_there_while_others_write(js) -> None:  # type: ignore[no-untyped-def]
    """Once ``start`` returns, every key stored before it is in the mirror, though other
    writers keep adding keys meanwhile (nats-py's end-of-replay marker can come before
    the replay did, which would call a partial mirror loaded)."""
    kv = await bus.ensure_kv(js, "mirror_busy")
    for i in range(0, 400, 50):
        await asyncio.gather(*(kv.put(f"k{j}", enc(j)) for j in range(i, i + 50)))
    stop = asyncio.Event()

    async def writer(tag: str) -> None:
        n = 0
        while not stop.is_set():
            await kv.put(f"{tag}{n}", enc(n))
            n += 1

    writers = [asyncio.create_task(writer(f"w{j}-")) for j in range(4)]
    try:
        for _ in range(10):
            m = bus.KVMirror(js, "mirror_busy", DEC)
            await m.start(timeout=10)
            try:
                missing = [f"k{j}" for j in range(400) if f"k{j}" not in m]
                assert not missing, f"loaded without {len(missing)} keys, e.g. {missing[:3]}"
            finally:
                await m.stop()
    finally:
        stop.set()
        await asyncio.gather(*writers)
