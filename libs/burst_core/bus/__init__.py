"""NATS JetStream helpers shared by every service (``from burst_core import bus``).

- :mod:`.connection`: :func:`connect` (reconnects for ever, renews ordered consumers at
  once after a reconnect), :func:`follow_from_now`, :func:`send_now`,
  :func:`subscribe_direct`.
- :mod:`.topology`: :func:`ensure_topology` creates Burst's streams, KV buckets and
  object stores, idempotently; :func:`ensure_kv`, :func:`ensure_consumer`.
- :mod:`.publish`: :func:`publish` with a ``Nats-Msg-Id``, retried through a leader
  change; :func:`publish_many`.
- :mod:`.consume`: :class:`Consumer`, a durable pull consumer whose ack/nak/term/
  in-progress follows from the handler's outcome (:class:`Retry`, :class:`Reject`).
- :mod:`.pull`: :func:`pull`, up to n messages of a durable consumer, none left in flight
  (:class:`ConsumerMissing` when there is no such consumer).
- :mod:`.kv`: KV reads and compare-and-set; :mod:`.mirror`: :class:`KVMirror`, a typed,
  current copy of a watched bucket.
- :mod:`._natspy`: every use of nats-py's private attributes (nothing else touches them).
"""

from burst_core.bus._natspy import client_of, direct, kv_subject
from burst_core.bus.connection import (
    JETSTREAM_READY_TIMEOUT,
    connect,
    follow_from_now,
    send_now,
    subscribe_direct,
)
from burst_core.bus.consume import Consumer, Handler, Reject, Retry, deliveries, quiet
from burst_core.bus.kv import kv_cas, kv_deleted, kv_get, kv_items, kv_keys, kv_values
from burst_core.bus.mirror import KVChange, KVMirror
from burst_core.bus.publish import publish, publish_many
from burst_core.bus.pull import ConsumerMissing, pull
from burst_core.bus.retry import retrying
from burst_core.bus.topology import (
    DAY,
    Topology,
    default_replicas,
    ensure_consumer,
    ensure_kv,
    ensure_topology,
)

__all__ = [
    "DAY", "JETSTREAM_READY_TIMEOUT", "Consumer", "ConsumerMissing", "Handler", "KVChange",
    "KVMirror", "Reject", "Retry", "Topology",
    "client_of", "connect", "default_replicas", "deliveries", "direct", "ensure_consumer",
    "ensure_kv", "follow_from_now",
    "ensure_topology", "kv_cas", "kv_deleted", "kv_get", "kv_items", "kv_keys", "kv_subject",
    "kv_values",
    "publish", "publish_many", "pull", "quiet", "retrying", "send_now", "subscribe_direct",
]
