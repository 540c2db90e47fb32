"""Entrypoint parameters become `burst run` options, as `modal run` makes them."""

from __future__ import annotations

from typing import Literal

import click
import pytest

from burst import _entrypoint
from burst.exception import InvalidError


def main(n: int, name: str = "x", ratio: float = 0.5, flag: bool = False,
         mode: Literal["fast", "slow"] = "fast", max_items: int | None = None) -> None:
    """Say hello N times."""


def parse(*args: str) -> dict[str, object] | None:
    return _entrypoint.parse(main, "main", list(args), "burst run app.py")


def test_typed_from_annotations_with_defaults() -> None:
    assert parse("--n", "3") == {"n": 3, "name": "x", "ratio": 0.5, "flag": False,
                                 "mode": "fast", "max_items": None}
    got = parse("--n", "2", "--name", "y", "--ratio", "1.5", "--flag", "--mode", "slow",
                "--max-items", "7")
    assert got == {"n": 2, "name": "y", "ratio": 1.5, "flag": True, "mode": "slow",
                   "max_items": 7}
    assert parse("--n=1", "--no-flag", "--max_items", "4") == {
        "n": 1, "name": "x", "ratio": 0.5, "flag": False, "mode": "fast", "max_items": 4}


def test_literal_choices_give_back_the_literal() -> None:
    def f(size: Literal[1, 2, 4] = 1) -> None: ...
    assert _entrypoint.parse(f, "f", ["--size", "4"], "p") == {"size": 4}
    with pytest.raises(click.BadParameter, match="3"):
        _entrypoint.parse(f, "f", ["--size", "3"], "p")


def test_required_without_default() -> None:
    with pytest.raises(click.MissingParameter) as e:
        parse()
    assert "--n" in e.value.format_message()


def test_wrong_type_names_option_and_value() -> None:
    with pytest.raises(click.BadParameter) as e:
        parse("--n", "three")
    assert "three" in e.value.format_message() and "--n" in e.value.format_message()


def test_unknown_option_and_extra_argument() -> None:
    with pytest.raises(click.NoSuchOption, match="--bogus"):
        parse("--n", "1", "--bogus", "2")
    with pytest.raises(click.UsageError, match="extra"):
        parse("--n", "1", "stray")


def test_help_lists_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse("--help") is None
    out = capsys.readouterr().out
    for text in ("--n INTEGER", "--name TEXT", "--flag / --no-flag", "fast", "slow",
                 "Say hello N times", "required"):
        assert text in out, out


def test_method_skips_self_and_no_parameters() -> None:
    class C:
        def m(self, x: int) -> None: ...
    assert _entrypoint.parse(C.m, "m", ["--x", "5"], "p", skip_first=True) == {"x": 5}
    assert _entrypoint.parse(lambda: None, "f", [], "p") == {}


def test_unsupported_parameters_are_refused_by_name() -> None:
    def lists(xs: list[int]) -> None: ...
    with pytest.raises(InvalidError, match="'xs'"):
        _entrypoint.parse(lists, "lists", [], "p")

    def star(*args: int) -> None: ...
    with pytest.raises(InvalidError, match="args"):
        _entrypoint.parse(star, "star", [], "p")
