"""burst_core.service.cancel_and_wait ends a task that lost its first cancel (as
asyncio.wait_for in Python 3.11 can lose one): a service's stop never hangs on it."""

from __future__ import annotations

import asyncio

from burst_core.service import cancel_and_wait


async def test_a_task_that_swallows_one_cancel_is_cancelled_again() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # lost, as wait_for loses one

    t = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    stopping = asyncio.create_task(cancel_and_wait([t]))
    done, _ = await asyncio.wait({stopping}, timeout=10)
    assert done == {stopping}, "cancel_and_wait still waits for a task that lost a cancel"
    assert t.cancelled() and swallowed == 1
