"""Waiting in tests for something that happens in another process or task: ``eventually``.

A condition is polled until it returns something truthy, which is returned; past the
timeout the test fails naming what it waited for. The async twin also awaits a condition
that returns an awaitable (a KV read, a Redis query).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


def _late(timeout: float, what: str) -> AssertionError:
    return AssertionError(f"not within {timeout} s: {what or 'condition not met'}")


def eventually(cond: Callable[[], Any], timeout: float, what: str, step: float = 0.2) -> Any:
    """Poll ``cond`` every ``step`` seconds until it returns something truthy (returned),
    or fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _late(timeout, what)
        time.sleep(step)


async def eventually_async(
    cond: Callable[[], Any], timeout: float = 5.0, what: str = "", step: float = 0.05
) -> Any:
    """As :func:`eventually`, inside an event loop; ``cond`` may return an awaitable."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise _late(timeout, what)
        await asyncio.sleep(step)
