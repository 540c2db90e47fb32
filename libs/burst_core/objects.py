"""burst.Dict and burst.Queue, stored in JetStream; shared by the gateway (HTTP callers)
and the agent (user code in containers, which has no route to the cluster).

- A Dict is a slice of one KV bucket: entry ``d.<ws>.<name>.<sha256(key)>`` holds the
  pickled key and value (so ``keys()`` can return the keys), ``meta.<ws>.<name>`` marks
  that the dict exists.
- A Queue is one subject of a work-queue stream with its own durable pull consumer;
  ``get`` acks what it returns, so each item is handed out once.
Keys and values are opaque bytes (cloudpickle made by the SDK): services never unpickle.

An ephemeral object (``Dict.ephemeral()``, ``Queue.ephemeral()``) made by a client names
that client (``client_id``): it is recorded in KV ``burst_clients`` beside the client's
heartbeat, and the scheduler's reaper deletes it if the client dies before its block ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Literal

import msgspec
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue

from burst.exception import InvalidError, NotFoundError
from burst.wire import DictRequest, DictResponse, QueueRequest, QueueResponse, check_client_id
from burst_core import bus, names
from burst_core.schemas import ClientObject, encode


class _Entry(msgspec.Struct):
    key: bytes
    value: bytes


_entry_decoder = msgspec.msgpack.Decoder(_Entry)
MAX_QUEUE_WAIT = 60.0
MAX_GET_MANY = 1000
MAX_PARTITION_LEN = 64
#: Entries read at once when a dict is listed or counted.
SCAN_BATCH = 256


def _subject(workspace: str, queue: str, partition: str) -> str:
    """The default partition is the queue's subject; another is a token below it (hashed,
    so any string is a valid subject)."""
    base = names.queue_subject(workspace, queue)
    if not partition:
        return base
    return f"{base}.p{hashlib.sha256(partition.encode()).hexdigest()[:24]}"


def _name(kind: str, name: str) -> str:
    try:
        return names.check_ident(kind, name)
    except ValueError as e:
        raise InvalidError(str(e)) from None


class Objects:
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._kv: KeyValue | None = None
        self._queues_ready: set[str] = set()

    async def _dicts(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(names.KV_DICTS)
        return self._kv

    async def _own(self, workspace: str, client_id: str, kind: Literal["dict", "queue"],
                   name: str, op: str) -> None:
        """Tie an ephemeral object to its client (``ensure``) or untie it (``delete``): the
        scheduler's reaper removes a client's objects when its heartbeats stop."""
        try:
            names.check_ident("workspace", workspace)
            check_client_id(client_id)
        except ValueError as e:
            raise InvalidError(str(e)) from None
        kv = await self.js.key_value(names.KV_CLIENTS)
        key = names.client_object_key(workspace, client_id, kind, name)
        if op == "ensure":
            await kv.put(key, encode(ClientObject(workspace=workspace, client_id=client_id,
                                                  kind=kind, name=name,
                                                  created_at=time.time())))
        else:
            await kv.delete(key)

    # ---- Dict --------------------------------------------------------------------------
    async def dict_op(self, workspace: str, req: DictRequest) -> DictResponse:
        name = _name("dict", req.name)
        kv = await self._dicts()
        meta = names.dict_meta_key(workspace, name)
        exists, _ = await bus.kv_get(kv, meta)
        if exists is None:
            if not req.create_if_missing:
                raise NotFoundError(f"dict {name!r} does not exist in workspace {workspace!r} "
                                    "(create it with create_if_missing=True)")
            await kv.put(meta, str(time.time()).encode())
        if req.op == "ensure":
            if req.client_id:
                await self._own(workspace, req.client_id, "dict", name, "ensure")
            return DictResponse(found=True)
        if req.op == "delete":
            out = await self._scan(kv, workspace, name, "clear")
            await kv.delete(meta)
            if req.client_id:
                await self._own(workspace, req.client_id, "dict", name, "delete")
            return out
        if req.op in ("len", "keys", "items", "clear"):
            return await self._scan(kv, workspace, name, req.op)
        key = names.dict_entry_key(workspace, name, hashlib.sha256(req.key).hexdigest())
        if req.op == "put":
            data = msgspec.msgpack.encode(_Entry(req.key, req.value))
            if not req.skip_if_exists:
                await kv.put(key, data)
                return DictResponse(found=True)
            try:
                await kv.create(key, data)  # atomic: fails when a live value is there
            except nats.js.errors.KeyWrongLastSequenceError:
                return DictResponse(found=False)
            return DictResponse(found=True)
        raw, rev = await bus.kv_get(kv, key)
        if raw is None:
            return DictResponse(found=False)
        entry = _entry_decoder.decode(raw)
        if req.op == "pop":
            try:
                await kv.delete(key, last=rev)
            except nats.js.errors.KeyWrongLastSequenceError:  # popped or changed meanwhile
                return await self.dict_op(workspace, req)
        if req.op == "contains":
            return DictResponse(found=True)
        return DictResponse(found=True, value=entry.value)

    async def _scan(self, kv: KeyValue, workspace: str, name: str, op: str) -> DictResponse:
        # The stream lists deleted keys too (a tombstone is a key's last message): only the
        # ones with a value count.
        keys = await bus.kv_keys(kv, names.dict_entries_prefix(workspace, name))
        live: list[tuple[str, bytes]] = []
        for i in range(0, len(keys), SCAN_BATCH):
            chunk = keys[i:i + SCAN_BATCH]
            got = await asyncio.gather(*(bus.kv_get(kv, k) for k in chunk))
            live += [(k, raw) for k, (raw, _) in zip(chunk, got, strict=True) if raw is not None]
        if op == "len":
            return DictResponse(count=len(live))
        if op == "clear":
            await asyncio.gather(*(kv.delete(k) for k, _ in live))
            return DictResponse(count=len(live))
        entries = [_entry_decoder.decode(raw) for _, raw in live]
        return DictResponse(count=len(entries), keys=[e.key for e in entries],
                            values=[e.value for e in entries] if op == "items" else [])

    # ---- Queue -------------------------------------------------------------------------
    async def _consumer(self, workspace: str, name: str, partition: str = "") -> str:
        durable = names.queue_consumer(workspace, name if not partition else f"{name}/{partition}")
        if durable not in self._queues_ready:
            await bus.ensure_consumer(self.js, names.STREAM_QUEUES, ConsumerConfig(
                durable_name=durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=30.0,
                deliver_policy=DeliverPolicy.ALL,
                filter_subject=_subject(workspace, name, partition)))
            self._queues_ready.add(durable)
        return durable

    async def _drop_consumers(self, workspace: str, name: str) -> None:
        """Delete the consumers of queue ``name``: its default partition's and every other
        partition's (found by their filter subjects, a page of the stream's consumers at a
        time)."""
        base = _subject(workspace, name, "")
        doomed: list[str] = []
        offset = 0
        while True:
            page = await self.js.consumers_info(names.STREAM_QUEUES, offset=offset)
            if not page:
                break
            offset += len(page)
            doomed += [c.name for c in page
                       if c.config.filter_subject == base
                       or (c.config.filter_subject or "").startswith(base + ".")]
        for durable in doomed:
            self._queues_ready.discard(durable)
            try:
                await self.js.delete_consumer(names.STREAM_QUEUES, durable)
            except nats.js.errors.NotFoundError:  # deleted meanwhile by another caller
                pass

    async def queue_op(self, workspace: str, req: QueueRequest) -> QueueResponse:
        name = _name("queue", req.name)
        if len(req.partition) > MAX_PARTITION_LEN:
            raise InvalidError(f"partition key of {len(req.partition)} characters is too long: "
                               f"allowed up to {MAX_PARTITION_LEN}")
        subject = _subject(workspace, name, req.partition)
        if req.op == "ensure":
            await self._consumer(workspace, name, req.partition)
            if req.client_id:
                await self._own(workspace, req.client_id, "queue", name, "ensure")
            return QueueResponse()
        if req.op == "delete":  # every partition's items and consumers
            await self._drop_consumers(workspace, name)
            await self.js.purge_stream(names.STREAM_QUEUES, subject=subject)
            await self.js.purge_stream(names.STREAM_QUEUES, subject=subject + ".>")
            if req.client_id:
                await self._own(workspace, req.client_id, "queue", name, "delete")
            return QueueResponse()
        if req.op == "put":
            for value in req.values:
                await bus.publish(self.js, subject, value)
            return QueueResponse(count=len(req.values))
        if req.op == "len":
            base = _subject(workspace, name, "")
            filt = f"{base}.>" if req.total else subject
            info = await self.js.stream_info(names.STREAM_QUEUES, subjects_filter=filt)
            counts = info.state.subjects or {}
            if not req.total:
                return QueueResponse(count=int(counts.get(subject, 0)))
            default = await self.js.stream_info(names.STREAM_QUEUES, subjects_filter=base)
            n = int((default.state.subjects or {}).get(base, 0))
            return QueueResponse(count=n + sum(int(v) for v in counts.values()))
        if req.op == "clear":
            await self.js.purge_stream(names.STREAM_QUEUES, subject=subject)
            return QueueResponse()
        if not 1 <= req.n <= MAX_GET_MANY:
            raise InvalidError(f"n={req.n} is out of range: allowed 1 to {MAX_GET_MANY}")
        durable = await self._consumer(workspace, name, req.partition)
        wait = MAX_QUEUE_WAIT if req.timeout is None else min(max(req.timeout, 0.0), MAX_QUEUE_WAIT)
        try:
            msgs = await bus.pull(self.js, names.STREAM_QUEUES, durable, req.n, wait)
        except bus.ConsumerMissing:
            # The queue was deleted (by another gateway or agent) since this process made
            # its consumer, and is used again: make it anew.
            self._queues_ready.discard(durable)
            durable = await self._consumer(workspace, name, req.partition)
            msgs = await bus.pull(self.js, names.STREAM_QUEUES, durable, req.n, wait)
        # Each item is handed out once: acknowledged (and confirmed) before it is returned.
        for i in range(0, len(msgs), SCAN_BATCH):
            await asyncio.gather(*(m.ack_sync() for m in msgs[i:i + SCAN_BATCH]))
        return QueueResponse(values=[m.data for m in msgs], count=len(msgs))
