from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from nats.js.api import ConsumerConfig

from burst_core import bus, names
from tests.servers import Server

pytestmark = pytest.mark.integration


async def test_topology_is_idempotent(js) -> None:  # type: ignore[no-untyped-def]
    await bus.ensure_topology(js)
    info = await js.stream_info(names.STREAM_INPUTS)
    assert str(getattr(info.config.retention, "value", info.config.retention)) == "workqueue"


async def test_consumer_acks_naks_and_terms_by_outcome(js) -> None:  # type: ignore[no-untyped-def]
    seen: dict[bytes, int] = {}
    done = asyncio.Event()

    async def handler(msg) -> None:  # type: ignore[no-untyped-def]
        seen[msg.data] = seen.get(msg.data, 0) + 1
        if msg.data == b"retry" and seen[msg.data] < 3:
            raise bus.Retry(0.05)
        if msg.data == b"bad":
            raise bus.Reject("malformed")
        if seen.get(b"retry") == 3 and b"ok" in seen:
            done.set()

    c = bus.Consumer(js, names.STREAM_CONTROL, "t1", handler,
                     filter_subjects=["burst.control.test.>"], ack_wait=2)
    await c.start()
    for body in (b"ok", b"retry", b"bad"):
        await bus.publish(js, "burst.control.test.x", body, msg_id=body.decode())
    await asyncio.wait_for(done.wait(), 10)
    await asyncio.sleep(0.3)
    await c.stop()
    assert seen == {b"ok": 1, b"retry": 3, b"bad": 1}
    info = await js.consumer_info(names.STREAM_CONTROL, "t1")
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_publish_dedupes_by_msg_id(js) -> None:  # type: ignore[no-untyped-def]
    a = await bus.publish(js, "burst.control.test.d", b"1", msg_id="same")
    b = await bus.publish(js, "burst.control.test.d", b"1", msg_id="same")
    assert not a.duplicate and b.duplicate


async def test_kv_cas_serialises_racing_writers(js) -> None:  # type: ignore[no-untyped-def]
    kv = await js.key_value(names.KV_AGENTS)

    def incr(cur: bytes | None) -> bytes:
        return str(int(cur or b"0") + 1).encode()

    await asyncio.gather(*(bus.kv_cas(kv, "counter", incr) for _ in range(20)))
    value, _ = await bus.kv_get(kv, "counter")
    assert value == b"20"


async def test_publish_answers_errors_and_timeouts_by_class(js) -> None:  # type: ignore[no-untyped-def]
    import nats.errors
    import nats.js.errors

    create_only = {"Nats-Expected-Last-Subject-Sequence": "0"}
    subject = f"burst.control.test.once{time.time_ns()}"
    first = await bus.publish(js, subject, b"1", headers=create_only)
    assert first.seq > 0
    with pytest.raises(nats.js.errors.APIError) as e:  # answered at once, not timed out
        await asyncio.wait_for(bus.publish(js, subject, b"2", headers=create_only), 1.5)
    assert e.value.err_code == 10071
    with pytest.raises(nats.js.errors.NoStreamResponseError):  # no stream has the subject
        await bus.publish(js, "nostream.anywhere", b"x", retry_for=0.2)


async def test_publish_many_in_order_and_first_publishes_share_one_subscription(
        js, nats_url) -> None:  # type: ignore[no-untyped-def]
    import nats as nats_client
    import nats.js.errors

    nc = await nats_client.connect(nats_url)
    try:
        fresh = nc.jetstream()
        # Racing first publishes on a fresh context: one ack subscription, all answered.
        acks = await asyncio.gather(*(bus.publish(fresh, "burst.control.test.race", b"r",
                                                  msg_id=f"race-{time.time_ns()}-{i}")
                                      for i in range(20)))
        assert len({a.seq for a in acks}) == 20
        assert sum(1 for s in nc._subs.values() if s.subject.endswith(".*")) == 1
        subject = f"burst.control.test.many{time.time_ns()}"
        results = await bus.publish_many(fresh, [
            (subject, b"a", {"Nats-Expected-Last-Subject-Sequence": "0"}),
            (subject, b"b", {"Nats-Expected-Last-Subject-Sequence": "0"}),  # refused
            ("burst.control.test.other", b"c", {}),
        ])
        assert results[0].seq > 0 and results[2].seq > results[0].seq
        assert isinstance(results[1], nats.js.errors.APIError) and results[1].err_code == 10071
        assert not fresh._burst_acks.futs  # nothing left waiting
    finally:
        await nc.close()


async def test_kv_items_lists_every_live_key_while_one_is_written(js) -> None:  # type: ignore[no-untyped-def]
    kv = await bus.ensure_kv(js, "test_kv_items")
    assert await bus.kv_items(js, "test_kv_items") == {}
    await kv.put("a", b"1")
    await kv.put("b", b"2")
    await kv.put("c", b"3")
    await kv.delete("c")
    assert await bus.kv_items(js, "test_kv_items") == {"a": b"1", "b": b"2"}
    # A key rewritten all the while (an agent's record) is never missing from the listing.
    stop = asyncio.Event()

    async def churn() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            await kv.put("a", str(i).encode())

    writer = asyncio.create_task(churn())
    try:
        for _ in range(100):
            assert set(await bus.kv_items(js, "test_kv_items")) == {"a", "b"}
    finally:
        stop.set()
        await writer


async def test_kv_keys_lists_the_stream_subjects_and_kv_values_the_live_ones(js) -> None:  # type: ignore[no-untyped-def]
    kv = await bus.ensure_kv(js, f"test_keys_{time.time_ns()}")
    for key in ("a.1", "a.2", "b.1"):
        await kv.put(key, key.encode())
    await kv.delete("a.2")
    assert await bus.kv_keys(kv, "a") == ["a.1", "a.2"]  # the deleted key's tombstone too
    assert await bus.kv_keys(kv) == ["a.1", "a.2", "b.1"]
    assert await bus.kv_values(kv, "a") == {"a.1": b"a.1"}
    assert await bus.kv_values(kv) == {"a.1": b"a.1", "b.1": b"b.1"}


async def test_direct_subscription_hands_every_message_to_its_handler_in_the_read(
        js) -> None:  # type: ignore[no-untyped-def]
    nc = bus.client_of(js)
    got: list[bytes] = []
    tasks_before = len(asyncio.all_tasks())

    def handler(msg) -> None:  # type: ignore[no-untyped-def]
        if msg.data == b"boom":
            raise ValueError("a handler's error is logged, not fatal")
        got.append(msg.data)

    # A 1 KiB pending limit: 200 messages of 100 bytes would overflow a queue that was
    # never emptied (nats-py would drop them as a slow consumer).
    sub = bus.direct(await nc.subscribe("direct.test", pending_bytes_limit=1024), handler)
    assert len(asyncio.all_tasks()) == tasks_before  # no task of its own
    await nc.publish("direct.test", b"boom")
    for i in range(200):
        await nc.publish("direct.test", b"%03d" % i + b"x" * 97)
    await nc.flush()
    # (10 s: a wait only a loaded machine spends; it was 1 s)
    await _until(lambda: len(got) >= 200, 10, "the 200 messages handed to the handler")
    assert got == [b"%03d" % i + b"x" * 97 for i in range(200)]
    assert sub.pending_bytes == 0 and sub.pending_msgs == 0
    await nc.publish("direct.test", b"last")
    await sub.drain()  # what was sent before the drain still arrives
    assert got[-1] == b"last"
    await nc.publish("direct.test", b"after")
    await nc.flush()
    await asyncio.sleep(0.05)
    assert got[-1] == b"last"

    with pytest.raises(RuntimeError, match="pending queue"):
        bus.direct(object(), handler)


async def test_send_now_writes_the_buffered_publishes_before_the_loop_turns(
        js) -> None:  # type: ignore[no-untyped-def]
    nc = bus.client_of(js)
    other = await bus.connect(nc.connected_url.geturl(), "test-other")
    got: list[bytes] = []
    bus.direct(await other.subscribe("now.test"), lambda m: got.append(m.data))
    await other.flush()
    await nc.publish("now.test", b"a")
    await nc.publish("now.test", b"b")
    assert nc._pending_data_size > 0  # nats-py left them to its flusher task
    bus.send_now(nc)
    assert nc._pending_data_size == 0 and nc._pending == []
    # (10 s: a wait only a loaded machine spends; it was 1 s)
    await _until(lambda: len(got) >= 2, 10, "both messages")
    assert got == [b"a", b"b"]  # once each: the flusher found nothing left to write
    await asyncio.sleep(0.05)
    assert got == [b"a", b"b"]
    await other.close()


async def test_send_now_writes_once_per_loop_turn_and_leaves_the_rest_to_the_flusher(
        js) -> None:  # type: ignore[no-untyped-def]
    nc = bus.client_of(js)
    await nc.flush()
    await nc.publish("now.turn", b"1")
    bus.send_now(nc)
    assert nc._pending_data_size == 0
    await nc.publish("now.turn", b"2")  # the same turn: gathered for the flusher
    bus.send_now(nc)
    assert nc._pending_data_size > 0
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    await nc.publish("now.turn", b"3")  # a later turn: written at once again
    bus.send_now(nc)
    assert nc._pending_data_size == 0


async def test_deliveries_counts_as_the_message_metadata_does(js) -> None:  # type: ignore[no-untyped-def]
    from nats.aio.msg import Msg

    await js.add_stream(name="DELIV", subjects=["deliv.>"])
    await js.publish("deliv.a", b"x")
    sub = await js.pull_subscribe("deliv.a", "d", stream="DELIV",
                                  config=ConsumerConfig(ack_wait=30))
    [first] = await sub.fetch(1, timeout=5)
    assert bus.deliveries(first) == first.metadata.num_delivered == 1
    await first.nak()
    [again] = await sub.fetch(1, timeout=5)
    assert bus.deliveries(again) == again.metadata.num_delivered == 2
    # The reply subject with a domain and an account hash (the newer form).
    v2 = Msg(bus.client_of(js), reply="$JS.ACK.hub.ACCHASH.S.c.3.10.5.1700000000000000000.0.tok")
    assert bus.deliveries(v2) == v2.metadata.num_delivered == 3


async def test_ordered_consumers_follow_again_right_after_a_server_restart(
        nats_server: Server) -> None:
    """A restarted server forgot every ordered consumer (KV watches, the gateway's
    outputs): they are renewed on the reconnect, not after nats-py's two missed idle
    heartbeats (10 s), and one that delivered nothing yet does not replay the stream, nor
    miss what is stored while it is being renewed (a follow "from now" with
    ``DeliverPolicy.NEW`` did, whenever the renewal came a moment after the publish: the
    CI failure of a loaded machine, reproduced by delaying the renewal by 0.5 s).

    nats-py's own idle-heartbeat renewal is switched off for both, so only the renewal
    on reconnect can make this pass (nats-py's would also replay the fresh follow from
    sequence 1); the wait allows a loaded machine 8 s from the reconnect."""
    nc = await bus.connect(nats_server.url, "test-ordered")
    try:
        js = nc.jetstream()
        await bus.ensure_topology(js)
        for i in range(3):  # before the follow "from now": never delivered to it
            await bus.publish(js, names.output_subject(f"old-{i}", 1), b"old")
        fresh: list[bytes] = []
        sub = await bus.follow_from_now(js, names.SUBJECTS_OUTPUTS, names.STREAM_OUTPUTS)
        bus.direct(sub._sub, lambda m: fresh.append(m.data))
        kv = await js.key_value(names.KV_HEARTBEATS)
        await kv.put("a", b"1")
        watched: list[tuple[str, bytes]] = []
        watcher = await kv.watchall()
        for s in (sub._sub, watcher._sub._sub):  # nats-py's own renewal, after 10 s: off
            s._jsi._hbtask.cancel()

        async def follow() -> None:
            async for e in watcher:
                if e is not None:
                    watched.append((e.key, e.value))

        task = asyncio.create_task(follow())
        await _until(lambda: watched == [("a", b"1")], 5, "the watch's initial value")
        await asyncio.to_thread(nats_server.restart, kill=True)
        await _until(lambda: nc.is_connected, 15, "reconnected")
        # Written at once, while the renewal may still be under way: none of it may be
        # missed.
        await kv.put("a", b"2")
        await bus.publish(js, names.output_subject("new", 1), b"new")
        await _until(lambda: ("a", b"2") in watched and b"new" in fresh, 8,
                     "the watch and the follow after the restart")
        assert fresh == [b"new"]  # nothing replayed from before the follow began
        assert watched == [("a", b"1"), ("a", b"2")]
        task.cancel()
        await watcher.stop()
    finally:
        await nc.close()


async def _until(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.01)


async def test_a_flush_after_subscribe_means_the_server_has_the_interest(
        nats_url: str) -> None:
    """nats-py wrote a PING ahead of the SUB still in its buffer, so a flush could return
    before the server knew of the subscription and a publish just after was lost (about 1
    in 20 here); and a drain dropped what was published before it (see bus._natspy.order_pings)."""
    pub = await bus.connect(nats_url, "test-pub")
    sub_nc = await bus.connect(nats_url, "test-sub")
    lost = []
    try:
        for k in range(200):
            got: list[bytes] = []
            sub = bus.direct(await sub_nc.subscribe(f"interest.{k}"),
                             lambda m, got=got: got.append(m.data))
            await sub_nc.flush()
            await pub.publish(f"interest.{k}", b"x")
            await pub.flush()
            # 5 s at most (spent only on a late or lost message: a lost one never comes;
            # 2 s left a loaded machine too little).
            for _ in range(500):
                if got:
                    break
                await asyncio.sleep(0.01)
            if not got:
                lost.append(k)
            await sub_nc.publish(f"interest.{k}", b"last")
            await sub.drain()  # what this connection published before the drain arrives
            if got[-1:] != [b"last"]:
                lost.append(-k - 1)
        assert lost == [], f"lost after subscribe+flush or before drain: {lost}"
    finally:
        await pub.close()
        await sub_nc.close()


async def test_a_new_stream_leader_renews_that_streams_ordered_consumers(
        nats_url: str) -> None:
    """In a NATS cluster an ordered consumer (a KV watch) lives on one node; when that
    node dies and the client stays connected to another, the stream's new leader is
    announced and the watch is renewed at once, not after nats-py's two missed idle
    heartbeats (10 s). Stood in for here: the consumer deleted on the server, then the
    advisory; a connection given several URLs (a cluster) follows the advisories.

    nats-py's own renewal is switched off, so only the renewal on the advisory can make
    this pass; the wait allows a loaded machine 8 s (it was 4 s, with nats-py's own
    renewal able to come from 5 s on)."""
    nc = await bus.connect(f"{nats_url},{nats_url}", "test-leader")
    try:
        js = nc.jetstream()
        await bus.ensure_topology(js)
        kv = await js.key_value(names.KV_HEARTBEATS)
        await kv.put("l", b"1")
        watched: list[tuple[str, bytes]] = []
        watcher = await kv.watch("l")
        watcher._sub._sub._jsi._hbtask.cancel()  # nats-py's own renewal: off

        async def follow() -> None:
            async for e in watcher:
                if e is not None:
                    watched.append((e.key, e.value))

        task = asyncio.create_task(follow())
        await _until(lambda: ("l", b"1") in watched, 5, "the watch's initial value")
        stream = f"KV_{names.KV_HEARTBEATS}"
        for c in await js.consumers_info(stream):  # gone with its node
            await js.delete_consumer(stream, c.name)
        await nc.publish(f"$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{stream}", b"{}")
        # Renewed from the sequence after the last delivered: a write racing the renewal
        # is not missed.
        await kv.put("l", b"2")
        await _until(lambda: ("l", b"2") in watched, 8,
                     "the watch renewed after the stream's new leader")
        task.cancel()
        await watcher.stop()
    finally:
        await nc.close()
