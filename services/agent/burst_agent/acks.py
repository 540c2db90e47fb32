"""How an input's JetStream message is settled, decided in one place from its outcome.

Every way an input leaves the agent's hands ends in exactly one outcome: ``Ack`` (its
result is stored, or it needs none), ``Nak`` (run it again, after ``delay`` seconds, or at
once), ``Term`` (never deliverable: undecodable) or ``InProgress`` (still running: do not
redeliver yet). ``action`` maps an outcome to the JetStream action; ``settle`` applies it
best-effort (an unsettled message is redelivered, and its attempt is then found answered
or resumed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nats.aio.msg import Msg

from burst_core import bus


@dataclass(frozen=True, slots=True)
class Ack:
    """Done with: the input's output is stored, or the call needs none (cancelled, answered)."""


@dataclass(frozen=True, slots=True)
class Nak:
    """Deliver again, after ``delay`` seconds (``None``: at once, to any container)."""

    delay: float | None = None


@dataclass(frozen=True, slots=True)
class Term:
    """Never deliver again: the message cannot be an input."""


@dataclass(frozen=True, slots=True)
class InProgress:
    """Still running: restart the redelivery clock (AckWait)."""


Outcome = Ack | Nak | Term | InProgress

ActionKind = Literal["ack", "nak", "term", "in_progress"]


def action(outcome: Outcome) -> tuple[ActionKind, float | None]:
    """The JetStream action for an outcome, and the nak's delay (``None``: none)."""
    match outcome:
        case Ack():
            return "ack", None
        case Nak(delay=delay):
            if delay is not None and delay < 0:
                raise ValueError(f"Nak delay {delay!r}: must be >= 0 seconds or None")
            return "nak", delay
        case Term():
            return "term", None
        case InProgress():
            return "in_progress", None
    raise TypeError(f"not an input outcome: {outcome!r} (allowed: Ack, Nak, Term, InProgress)")


async def settle(msg: Msg, outcome: Outcome) -> None:
    """Apply ``outcome`` to ``msg``; a failure is logged, not raised."""
    kind, delay = action(outcome)
    if kind == "ack":
        await bus.quiet(msg.ack())
    elif kind == "nak":
        await bus.quiet(msg.nak(delay=delay))
    elif kind == "term":
        await bus.quiet(msg.term())
    else:
        await bus.quiet(msg.in_progress())
