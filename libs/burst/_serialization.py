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


def serialize(obj: Any) -> bytes:
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
