"""``@burst.concurrent``: several inputs at once in one container."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from burst.exception import InvalidError

F = TypeVar("F", bound=Callable[..., Any])

MAX_INPUTS_LIMIT = 1000


def concurrent(*, max_inputs: int, target_inputs: int | None = None) -> Callable[[F], F]:
    """Let one container run up to ``max_inputs`` inputs at once: async functions as
    tasks of one event loop, sync functions on threads. The autoscaler aims at
    ``target_inputs`` per container (default: ``max_inputs``).

    Example::

        @app.function()
        @burst.concurrent(max_inputs=8)
        async def fetch(url): ...
    """
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
        return f

    return decorator
