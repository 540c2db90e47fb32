"""Reading and compare-and-set writing of KV entries."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from burst_core.bus import _natspy


def kv_deleted(entry: Any) -> bool:
    """Whether a watched KV entry says its key is gone (deleted, purged, or empty)."""
    return entry.operation in ("DEL", "PURGE") or not entry.value


async def kv_get(kv: KeyValue, key: str) -> tuple[bytes | None, int]:
    """Value and revision of ``key``, or ``(None, 0)`` when absent or deleted."""
    try:
        e = await kv.get(key)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
        return None, 0
    return e.value, e.revision or 0


async def kv_keys(kv: KeyValue, prefix: str = "") -> list[str]:
    """The bucket's keys (under ``prefix`` + '.', when given) as its stream lists their
    subjects, sorted; a deleted key is listed too (its tombstone is its last message).

    Not ``KeyValue.keys()`` or a watcher: those may decide they are done before they
    counted the messages already on their way, and then list some keys or none at all (a
    status showing no agents while one is busy, a ledger piece never cleaned up).
    """
    return await _natspy.kv_subjects(kv, prefix)


async def kv_items(js: JetStreamContext, bucket: str, prefix: str = "") -> dict[str, bytes]:
    """Every live key of a (small) bucket, under ``prefix`` + '.' when given, with its
    value (see :func:`kv_keys`)."""
    kv = await js.key_value(bucket)
    return await kv_values(kv, prefix)


async def kv_values(kv: KeyValue, prefix: str = "") -> dict[str, bytes]:
    """Key -> value of every live key of ``kv`` (under ``prefix`` + '.', when given)."""
    out: dict[str, bytes] = {}
    for key in await kv_keys(kv, prefix):
        raw, _ = await kv_get(kv, key)
        if raw is not None:
            out[key] = raw
    return out


async def kv_cas(
    kv: KeyValue,
    key: str,
    mutate: Callable[[bytes | None], bytes | None],
    attempts: int = 50,
) -> tuple[bytes | None, int]:
    """Compare-and-set loop: apply ``mutate`` to the current value until it sticks.

    ``mutate`` returns the new value, or ``None`` to leave the entry as it is. Returns the
    value written (or None) and its revision. Raises RuntimeError after ``attempts``
    conflicting writers in a row.
    """
    for _ in range(attempts):
        cur, rev = await kv_get(kv, key)
        new = mutate(cur)
        if new is None:
            return None, rev
        try:
            if rev == 0:
                rev = await kv.create(key, new)
            else:
                rev = await kv.update(key, new, last=rev)
            return new, rev
        except nats.js.errors.KeyWrongLastSequenceError:
            await asyncio.sleep(0)
            continue
    raise RuntimeError(f"compare-and-set on {_natspy.kv_name(kv)}/{key} lost {attempts} "
                       "times in a row")
