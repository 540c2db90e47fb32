"""``input.accepted`` signals are coalesced per function: one at once, one trailing."""

from __future__ import annotations

import asyncio

import pytest

from burst_core import bus, calls, names
from burst_core.schemas import InputAcceptedDecoder

pytestmark = pytest.mark.integration


async def _collect(js, subject: str) -> tuple[list[str], object]:  # type: ignore[no-untyped-def]
    got: list[str] = []

    async def on(msg) -> None:  # type: ignore[no-untyped-def]
        got.append(InputAcceptedDecoder.decode(msg.data).call_id)

    sub = await bus.client_of(js).subscribe(subject, cb=on)
    return got, sub


async def test_calls_within_the_interval_share_one_trailing_signal(js) -> None:  # type: ignore[no-untyped-def]
    nc = bus.client_of(js)
    signals = calls.Signals(nc, interval=0.3)
    a, b = "ws.app.f", "ws.app.g"
    got_a, sub_a = await _collect(js, names.input_accepted_subject(a))
    got_b, sub_b = await _collect(js, names.input_accepted_subject(b))
    await signals.accepted(a, "c1", 1.0)  # the first: at once
    await nc.flush()
    await asyncio.sleep(0.05)
    assert got_a == ["c1"]
    for i in range(2, 12):  # within the interval: held back
        await signals.accepted(a, f"c{i}", float(i))
    await signals.accepted(b, "other", 1.0)  # another function is not held back by a's
    await nc.flush()
    await asyncio.sleep(0.05)
    assert got_a == ["c1"]
    assert got_b == ["other"]
    await asyncio.sleep(0.35)  # the interval ended: one trailing signal, the latest call
    assert got_a == ["c1", "c11"]
    await asyncio.sleep(0.35)  # an interval after the trailing one: the next goes at once
    await signals.accepted(a, "c12", 12.0)
    await nc.flush()
    await asyncio.sleep(0.05)
    assert got_a == ["c1", "c11", "c12"]
    assert signals.sent == 4
    await sub_a.unsubscribe()
    await sub_b.unsubscribe()


async def test_interval_zero_signals_every_call_and_flush_sends_the_trailing_one(js) -> None:  # type: ignore[no-untyped-def]
    nc = bus.client_of(js)
    fn = "ws.app.h"
    got, sub = await _collect(js, names.input_accepted_subject(fn))
    every = calls.Signals(nc, interval=0)
    for i in range(5):
        await every.accepted(fn, f"e{i}", float(i))
    held = calls.Signals(nc, interval=60)
    await held.accepted(fn, "h0", 0.0)
    await held.accepted(fn, "h1", 1.0)
    await held.accepted(fn, "h2", 2.0)
    await held.flush()  # a stopping gateway sends what it held back
    await nc.flush()
    await asyncio.sleep(0.05)
    assert got == ["e0", "e1", "e2", "e3", "e4", "h0", "h2"]
    await sub.unsubscribe()


async def test_a_trailing_signal_for_an_answered_call_is_not_sent(js) -> None:  # type: ignore[no-untyped-def]
    nc = bus.client_of(js)
    fn = "ws.app.k"
    got, sub = await _collect(js, names.input_accepted_subject(fn))
    answered = {"k2"}
    signals = calls.Signals(nc, interval=0.2, answered=answered.__contains__)
    await signals.accepted(fn, "k1", 1.0)  # at once, answered or not
    await signals.accepted(fn, "k2", 2.0)  # held back; answered before the interval ends
    await asyncio.sleep(0.3)
    await nc.flush()
    await asyncio.sleep(0.05)
    assert got == ["k1"] and signals.skipped == 1
    await signals.accepted(fn, "k3", 3.0)  # held back (the skipped one counts as sent)
    await asyncio.sleep(0.3)  # not answered: its trailing signal goes
    await nc.flush()
    await asyncio.sleep(0.05)
    assert got == ["k1", "k3"] and signals.sent == 2
    await sub.unsubscribe()
