"""Each input outcome maps to exactly one JetStream action (burst_agent.acks)."""

from __future__ import annotations

import pytest

from burst_agent.acks import Ack, InProgress, Nak, Term, action


def test_ack_acks() -> None:
    assert action(Ack()) == ("ack", None)


def test_nak_without_delay_redelivers_at_once() -> None:
    assert action(Nak()) == ("nak", None)


def test_nak_with_delay_carries_it() -> None:
    assert action(Nak(2.5)) == ("nak", 2.5)


def test_term_terminates() -> None:
    assert action(Term()) == ("term", None)


def test_in_progress_extends() -> None:
    assert action(InProgress()) == ("in_progress", None)


def test_negative_delay_is_refused_by_value() -> None:
    with pytest.raises(ValueError, match=r"-1\.0.*>= 0"):
        action(Nak(-1.0))


def test_unknown_outcome_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match="'done'.*Ack, Nak, Term, InProgress"):
        action("done")  # type: ignore[arg-type]
