"""Burst's streams, KV buckets, object stores and durable consumers, created
idempotently."""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass, field

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from burst_core import names
from burst_core.bus import _natspy
from burst_core.bus.retry import retrying

DAY = 24 * 3600.0
#: Sampled calls' spans (burst_core.tracing): one subject per call.
STREAM_TRACES = "BURST_TRACES"
SUBJECTS_TRACES = "burst.traces.>"
TRACES_MAX_BYTES = 256 << 20
MAX_SPANS_PER_CALL = 1000


def trace_retention(env: dict[str, str] | None = None) -> float:
    """Seconds sampled traces are kept: ``BURST_TRACE_RETENTION`` (default a day)."""
    raw = (os.environ if env is None else env).get("BURST_TRACE_RETENTION", "")
    try:
        value = float(raw) if raw.strip() else DAY
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ValueError(f"setting BURST_TRACE_RETENTION={raw!r}: use a number of seconds "
                         "above 0 (default 86400, a day)")
    return value

#: Default seconds transient calls' outputs and records are kept (``names.is_transient_call``).
TRANSIENT_RETENTION = 600.0


def check_transient_retention(transient: float, full: float, dedupe_window: float = 120.0,
                              ) -> float:
    """``transient`` (``BURST_TRANSIENT_RESULT_RETENTION``) if it is at least the streams'
    duplicate window and at most ``full`` (``BURST_RESULT_RETENTION``); else ValueError
    naming it and what is allowed."""
    if not dedupe_window <= transient <= full:
        raise ValueError(f"setting BURST_TRANSIENT_RESULT_RETENTION={transient!r}: use a "
                         f"number of seconds from {dedupe_window:g} (the streams' duplicate "
                         f"window) to BURST_RESULT_RETENTION ({full:g}); default "
                         f"{TRANSIENT_RETENTION:g}")
    return transient

#: The replica counts JetStream allows for a stream or bucket.
REPLICA_COUNTS = (1, 3, 5)


def default_replicas(env: dict[str, str] | None = None) -> int:
    """``BURST_REPLICAS``: how many NATS nodes keep a copy of each stream, KV bucket and
    object store Burst creates (1 on a single node; 3 on a three-node cluster, which then
    loses no acknowledged write when one node dies). Raises ValueError naming a bad value."""
    raw = (os.environ if env is None else env).get("BURST_REPLICAS", "").strip()
    if not raw:
        return 1
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n not in REPLICA_COUNTS:
        raise ValueError(f"setting BURST_REPLICAS={raw!r} is not a replica count JetStream "
                         f"keeps: use one of {', '.join(map(str, REPLICA_COUNTS))} (at most "
                         "the number of NATS nodes)")
    return n


@dataclass
class Topology:
    """Retention settings for the streams and buckets; defaults suit a single node
    (replicas from ``BURST_REPLICAS``)."""

    replicas: int = field(default_factory=default_replicas)
    result_retention: float = 7 * DAY
    #: How long transient calls' outputs and records are kept (``BURST_TRANSIENT_RESULT_
    #: RETENTION``): ``dedupe_window`` <= it <= ``result_retention``.
    transient_retention: float = TRANSIENT_RETENTION
    control_retention: float = 1 * DAY
    metering_retention: float = 400 * DAY
    log_retention: float = 7 * DAY
    queue_retention: float = 1 * DAY  # as Modal: a queue's items live 24 h
    log_max_bytes: int = 1 << 30
    #: How long sampled traces are kept (``BURST_TRACE_RETENTION``, in every service).
    trace_retention: float = field(default_factory=lambda: trace_retention())
    dedupe_window: float = 120.0
    extra_kv: dict[str, float] = field(default_factory=dict)


async def _ensure_stream(js: JetStreamContext, cfg: StreamConfig) -> None:
    await retrying(lambda: _ensure_stream_once(js, cfg))


async def _ensure_stream_once(js: JetStreamContext, cfg: StreamConfig) -> None:
    try:
        await js.add_stream(cfg)
    except nats.js.errors.BadRequestError as e:
        # Exists with another config (an upgrade changed a limit): converge on ours.
        if e.err_code == 10058:
            await js.update_stream(cfg)
        else:
            raise


async def ensure_topology(js: JetStreamContext, topo: Topology | None = None) -> None:
    """Create every stream, KV bucket and the object store Burst uses. Idempotent."""
    t = topo or Topology()
    r = t.replicas
    check_transient_retention(t.transient_retention, t.result_retention, t.dedupe_window)
    streams = [
        StreamConfig(
            name=names.STREAM_INPUTS,
            subjects=[names.SUBJECTS_INPUTS],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=r,
            max_age=t.result_retention,
            duplicate_window=t.dedupe_window,
        ),
        StreamConfig(
            name=names.STREAM_OUTPUTS,
            subjects=[names.SUBJECTS_OUTPUTS, names.SUBJECTS_ITEMS],
            storage=StorageType.FILE,
            num_replicas=r,
            max_age=t.result_retention,
            duplicate_window=t.dedupe_window,
            allow_direct=True,
        ),
        # Transient calls' outputs apart: they all expire in the order they came, whole
        # file blocks at a time (outputs kept for days never hold a block back).
        StreamConfig(
            name=names.STREAM_TRANSIENT_OUTPUTS,
            subjects=[names.SUBJECTS_TRANSIENT_OUTPUTS],
            storage=StorageType.FILE,
            num_replicas=r,
            max_age=t.transient_retention,
            duplicate_window=t.dedupe_window,
            allow_direct=True,
        ),
        StreamConfig(
            name=names.STREAM_CONTROL,
            subjects=[names.SUBJECTS_CONTROL],
            storage=StorageType.FILE,
            num_replicas=r,
            max_age=t.control_retention,
            duplicate_window=t.dedupe_window,
        ),
        StreamConfig(
            name=names.STREAM_METERING,
            subjects=[names.SUBJECTS_METERING],
            storage=StorageType.FILE,
            num_replicas=r,
            max_age=t.metering_retention,
            duplicate_window=t.dedupe_window,
        ),
        StreamConfig(
            name=names.STREAM_QUEUES,
            subjects=[names.SUBJECTS_QUEUES],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=r,
            max_age=t.queue_retention,
        ),
        StreamConfig(
            name=names.STREAM_LOGS,
            subjects=[names.SUBJECTS_LOGS],
            storage=StorageType.FILE,
            num_replicas=r,
            max_age=t.log_retention,
            max_bytes=t.log_max_bytes,
        ),
        StreamConfig(
            name=STREAM_TRACES,
            subjects=[SUBJECTS_TRACES],
            storage=StorageType.FILE,
            num_replicas=r,
            max_age=t.trace_retention,
            max_bytes=TRACES_MAX_BYTES,
            max_msgs_per_subject=MAX_SPANS_PER_CALL,
        ),
    ]
    for cfg in streams:
        await _ensure_stream(js, cfg)
    kvs: dict[str, float] = {
        names.KV_DEPLOYMENTS: 0,
        names.KV_AGENTS: 0,
        names.KV_HEARTBEATS: 0,
        names.KV_CALLS: t.result_retention,
        names.KV_CALLS_TRANSIENT: t.transient_retention,
        names.KV_IDEMPOTENCY: t.result_retention,
        names.KV_DICTS: 0,
        names.KV_MAPS: t.result_retention,
        names.KV_WAITING: 0,
        names.KV_CLIENTS: 0,
        names.KV_TOKENS: 0,
        names.KV_WORKSPACES: 0,
        names.KV_APP_VERSIONS: 0,
        names.KV_SERVICES: 0,
        names.KV_LEDGER: 0,
        names.KV_LEASES: 0,
        names.KV_SECRETS: 0,
        names.KV_VOLUMES: 0,
        **t.extra_kv,
    }
    for bucket, ttl in kvs.items():
        await ensure_kv(js, bucket, ttl=ttl, replicas=r)
    # The buckets kept as long as results follow a changed setting, as the streams do.
    for bucket in (names.KV_CALLS, names.KV_CALLS_TRANSIENT, names.KV_IDEMPOTENCY,
                   names.KV_MAPS):
        await retrying(functools.partial(_converge_kv_age, js, bucket, kvs[bucket]))
    for store, ttl in ((names.OBJ_BUNDLES, 0.0), (names.OBJ_BLOBS, t.result_retention)):
        await retrying(functools.partial(_ensure_object_store, js, store, ttl, r))


async def _converge_kv_age(js: JetStreamContext, bucket: str, ttl: float) -> None:
    """Set the bucket's max age to ``ttl`` if it was created with another."""
    info = await js.stream_info(f"KV_{bucket}")
    if ttl and abs((info.config.max_age or 0.0) - ttl) > 0.001:
        info.config.max_age = ttl
        await js.update_stream(info.config)


async def _ensure_object_store(js: JetStreamContext, store: str, ttl: float,
                               replicas: int) -> None:
    try:
        await js.object_store(store)
    except nats.js.errors.BucketNotFoundError:
        with contextlib.suppress(nats.js.errors.BadRequestError):
            # (nats-py overwrites config.bucket with its bucket argument: pass both)
            await js.create_object_store(
                store, config=ObjectStoreConfig(bucket=store, ttl=ttl or None,
                                                replicas=replicas))


async def ensure_kv(js: JetStreamContext, bucket: str, ttl: float = 0,
                    replicas: int | None = None) -> KeyValue:
    """The bucket, created when missing (``replicas`` default: ``BURST_REPLICAS``)."""
    n = default_replicas() if replicas is None else replicas
    return await retrying(lambda: _ensure_kv_once(js, bucket, ttl, n))


async def _ensure_kv_once(js: JetStreamContext, bucket: str, ttl: float,
                          replicas: int) -> KeyValue:
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(
            KeyValueConfig(bucket=bucket, history=1, ttl=ttl or None, replicas=replicas)
        )
    except nats.js.errors.BadRequestError:
        return await js.key_value(bucket)  # created by a racing service


async def ensure_consumer(js: JetStreamContext, stream: str, cfg: ConsumerConfig) -> None:
    await retrying(lambda: _ensure_consumer_once(js, stream, cfg))


async def _ensure_consumer_once(js: JetStreamContext, stream: str, cfg: ConsumerConfig) -> None:
    try:
        await js.add_consumer(stream, cfg)
    except nats.js.errors.BadRequestError as e:
        # Exists with other settings: update in place where JetStream allows it.
        if e.err_code in (10148, 10013, 10105):
            await _natspy.add_consumer_again(js, stream, cfg)  # pragma: no cover
        else:
            raise
