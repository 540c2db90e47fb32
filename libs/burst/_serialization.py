"""Arguments, results and exceptions travel as cloudpickle bytes.

Functions themselves never travel pickled: code ships by source (see ``_bundle``), so
a function or class defined in the app's module is pickled by reference and resolves to
the same module on both sides.
"""

from __future__ import annotations

import pickle
import traceback as tb
from typing import Any

import cloudpickle

from burst.exception import RemoteError

#: Types the pickle module writes itself, byte for byte as cloudpickle does (its
#: ``reducer_override`` is never asked about exact instances of these).
_PLAIN = frozenset({type(None), bool, int, float, str, bytes})
#: How deep and how long a container may be to be checked (beyond: cloudpickle).
_PLAIN_DEPTH = 3
_PLAIN_LEN = 64


def _plain(obj: Any, depth: int = 0) -> bool:
    """Whether ``obj`` is plain data: the types above, in (exact) tuples, lists and dicts."""
    t = type(obj)
    if t in _PLAIN:
        return True
    if depth >= _PLAIN_DEPTH or t not in (tuple, list, dict) or len(obj) > _PLAIN_LEN:
        return False
    if t is dict:
        return all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in obj.items())
    return all(_plain(x, depth + 1) for x in obj)


def serialize(obj: Any) -> bytes:
    """cloudpickle bytes of ``obj``. Plain data (a map's arguments and results, mostly)
    is written by the pickle module directly: the same bytes, without the cost of
    setting up cloudpickle's pickler (several times that of pickling a number)."""
    if _plain(obj):
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)  # type: ignore[no-any-return]


def deserialize(data: bytes) -> Any:
    return pickle.loads(data)


def serialize_exception(exc: BaseException) -> tuple[bytes, str, str, str]:
    """(payload, type name, message, formatted traceback) of a raised exception."""
    trace = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    try:
        payload = serialize(exc)
        pickle.loads(payload)  # some exceptions pickle but cannot be rebuilt
    except Exception:
        payload = b""
    return payload, name, str(exc), trace


def rebuild_exception(payload: bytes, type_name: str, message: str, trace: str) -> BaseException:
    """The remote exception as the same class with the same message, its traceback attached.

    Falls back to :class:`RemoteError` when the class cannot be recreated here.
    """
    exc: BaseException | None = None
    if payload:
        try:
            loaded = pickle.loads(payload)
            if isinstance(loaded, BaseException):
                exc = loaded
        except Exception:
            exc = None
    if exc is None:
        exc = RemoteError(f"{type_name}: {message}")
    if trace:
        exc.add_note(f"\nRemote traceback:\n{trace.rstrip()}")
    return exc
