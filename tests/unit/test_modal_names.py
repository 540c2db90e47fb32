"""Names Modal programs use that Burst answers: decorators without parentheses named,
``@enter(snap=...)``, ``modal.exception.TimeoutError``, and Modal's Image methods."""

from __future__ import annotations

import pytest

import burst
import burst.exception
from burst._unsupported import NotSupportedError
from burst.cls import hooks
from burst.exception import InvalidError


@pytest.mark.parametrize("name", ["method", "enter", "exit"])
def test_decorators_without_parentheses_say_so(name: str) -> None:
    with pytest.raises(InvalidError, match=rf"use @burst.{name}\(\) with parentheses"):
        getattr(burst, name)(lambda self: None)


def test_enter_snap_hooks_run_first() -> None:
    class Model:
        @burst.enter()
        def second(self) -> None: ...

        @burst.enter(snap=True)
        def first(self) -> None: ...

        @burst.enter(snap=False)
        def third(self) -> None: ...

        @burst.method(is_generator=False)
        def predict(self) -> None: ...

    assert hooks(Model, "__burst_enter__") == ["first", "second", "third"]
    assert hooks(Model, "__burst_method__") == ["predict"]


def test_modal_timeout_error_catches_both_timeouts() -> None:
    assert issubclass(burst.exception.FunctionTimeoutError, burst.exception.TimeoutError)
    with pytest.raises(burst.exception.TimeoutError):
        raise TimeoutError("a FunctionCall.get(timeout=) that ran out")


def test_pip_options_at_defaults_ask_for_nothing() -> None:
    base = burst.Image.debian_slim()
    assert (base.pip_install("six==1.16.0", pre=False, index_url=None).content_hash
            == base.pip_install("six==1.16.0").content_hash)
    # uv is a step of its own (another installer), not pip under another name
    assert (base.uv_pip_install("six==1.16.0").content_hash
            != base.pip_install("six==1.16.0").content_hash)


def test_modal_image_names_not_built_are_named() -> None:
    with pytest.raises(NotSupportedError, match="Image.micromamba"):
        burst.Image.micromamba()
    with pytest.raises(NotSupportedError, match="secrets="):
        burst.Image.debian_slim().uv_pip_install("six", secrets=["s"])
    with pytest.raises(InvalidError, match="unknown option bogus="):
        burst.Image.debian_slim().pip_install("six", bogus=1)
    with pytest.raises(AttributeError):
        burst.Image.debian_slim().no_such_method  # noqa: B018
