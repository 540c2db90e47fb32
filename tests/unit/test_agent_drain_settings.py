"""`burst agent drain`'s timeout: the agent's setting and the command's option."""

from __future__ import annotations

import pytest

from burst.exception import InvalidError


def test_the_drain_timeout_setting_must_be_positive() -> None:
    from burst_agent.settings import AgentSettings

    assert AgentSettings().drain_timeout == 300.0
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"BURST_DRAIN_TIMEOUT={bad}: use more than 0"):
            AgentSettings(drain_timeout=bad)


def test_the_drain_timeout_option_names_a_bad_value() -> None:
    from burst.cli.agents import parse_duration

    assert parse_duration("90s", "--timeout") == 90.0
    assert parse_duration("5m", "--timeout") == 300.0
    with pytest.raises(InvalidError, match="invalid --timeout '5 minutes': use a number"):
        parse_duration("5 minutes", "--timeout")
