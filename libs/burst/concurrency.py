"""``@burst.concurrent``: several inputs at once in one container."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from burst.exception import InvalidError

F = TypeVar("F", bound=Callable[..., Any])

MAX_INPUTS_LIMIT = 1000


def _mark_method(f: Any) -> None:
    """A decorated method of a class is callable remotely without ``@burst.method()``."""
    qual = getattr(f, "__qualname__", "")
    if inspect.isfunction(f) and "." in qual and not qual.endswith(">." + f.__name__):
        f.__burst_method__ = True  # type: ignore[attr-defined]  # see burst.cls.method


def concurrent(*, max_inputs: int | None = None,
               target_inputs: int | None = None) -> Callable[[F], F]:
    """Let one container run up to ``max_inputs`` inputs at once: async functions as
    tasks of one event loop, sync functions on threads. The autoscaler aims at
    ``target_inputs`` per container (default: ``max_inputs``).

    Example::

        @app.function()
        @burst.concurrent(max_inputs=8)
        async def fetch(url): ...

    ``target_inputs`` alone lets a container take that many inputs at once.
    """
    if max_inputs is None:
        if target_inputs is None:
            raise InvalidError("@burst.concurrent() needs max_inputs= (and optionally "
                               "target_inputs=)")
        max_inputs = target_inputs
    if isinstance(max_inputs, bool) or not isinstance(max_inputs, int) or not (
            1 <= max_inputs <= MAX_INPUTS_LIMIT):
        raise InvalidError(f"max_inputs={max_inputs!r} is out of range: allowed 1 to "
                           f"{MAX_INPUTS_LIMIT}")
    if target_inputs is not None and (
            isinstance(target_inputs, bool) or not isinstance(target_inputs, int)
            or not 1 <= target_inputs <= max_inputs):
        raise InvalidError(f"target_inputs={target_inputs!r} is out of range: allowed 1 to "
                           f"max_inputs ({max_inputs})")

    def decorator(f: F) -> F:
        if hasattr(f, "spec"):
            raise InvalidError("put @burst.concurrent below @app.function(), next to the def")
        f.__burst_concurrency__ = (max_inputs, target_inputs or max_inputs)  # type: ignore[attr-defined]
        _mark_method(f)
        return f

    return decorator


MAX_BATCH_SIZE = 1000
MAX_WAIT_MS = 10 * 60 * 1000


def batched(*, max_batch_size: int, wait_ms: int) -> Callable[[F], F]:
    """Dynamic batching: the function takes lists and returns a list of the same length;
    callers still call it with single items. A container gathers up to ``max_batch_size``
    inputs, waiting at most ``wait_ms`` after the first, and calls the function once.

    Example::

        @app.function()
        @burst.batched(max_batch_size=32, wait_ms=50)
        def embed(texts: list[str]) -> list[list[float]]: ...

        embed.remote("hello")  # one vector
    """
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or not (
            1 <= max_batch_size <= MAX_BATCH_SIZE):
        raise InvalidError(f"max_batch_size={max_batch_size!r} is out of range: allowed 1 to "
                           f"{MAX_BATCH_SIZE}")
    if isinstance(wait_ms, bool) or not isinstance(wait_ms, int) or not 0 <= wait_ms <= MAX_WAIT_MS:
        raise InvalidError(f"wait_ms={wait_ms!r} is out of range: allowed 0 to {MAX_WAIT_MS}")

    def decorator(f: F) -> F:
        if hasattr(f, "spec"):
            raise InvalidError("put @burst.batched below @app.function(), next to the def")
        f.__burst_batched__ = (max_batch_size, wait_ms)  # type: ignore[attr-defined]
        # The container takes as many inputs at once as a batch holds.
        f.__burst_concurrency__ = (max_batch_size, max_batch_size)  # type: ignore[attr-defined]
        _mark_method(f)
        return f

    return decorator
