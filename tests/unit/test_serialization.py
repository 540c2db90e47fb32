"""Arguments and results: plain data takes the pickle module's own path, byte for byte
what cloudpickle writes; anything else is cloudpickle's."""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle
import pytest

from burst import _serialization
from burst._serialization import deserialize, serialize

PLAIN: list[Any] = [
    None, True, 0, -(2**80), 1.5, float("nan"), "", "é" * 300, b"\x00" * 10,
    ((1,), {}), ((1, "a"), {"k": [1.0, None]}, "method", {"p": b"x"}),
    [list(range(64))], {"a": {"b": (1, 2)}},
]


def cloud(obj: Any) -> bytes:
    return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)  # type: ignore[no-any-return]


@pytest.mark.parametrize("obj", PLAIN, ids=repr)
def test_plain_data_is_pickled_by_the_pickle_module_to_the_same_bytes(
        obj: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = cloud(obj)

    def refuse(*_: Any, **__: Any) -> bytes:
        raise AssertionError("cloudpickle used for plain data")

    monkeypatch.setattr(_serialization.cloudpickle, "dumps", refuse)
    data = serialize(obj)
    assert data == expected
    again = deserialize(data)
    assert again == obj or (again != again and obj != obj)  # (nan)


class Local:
    def __init__(self, x: int) -> None:
        self.x = x


def _main_class() -> type:
    cls = type("InMain", (), {})
    cls.__module__ = "__main__"  # pickle would write a reference the container cannot load
    return cls


@pytest.mark.parametrize("obj", [
    lambda x: x,  # needs cloudpickle
    (1, lambda: 2),
    {"f": Local},
    _main_class()(),
    [1] * 65,  # longer than is checked
    ((((1,),),),),  # deeper than is checked
    {1, 2},  # a set: left to cloudpickle
    True.__class__,  # a class, not data
], ids=repr)
def test_everything_else_goes_through_cloudpickle(obj: Any, monkeypatch: pytest.MonkeyPatch
                                                  ) -> None:
    used: list[Any] = []
    real = _serialization.cloudpickle.dumps

    def spy(o: Any, **kw: Any) -> bytes:
        used.append(o)
        return real(o, **kw)  # type: ignore[no-any-return]

    monkeypatch.setattr(_serialization.cloudpickle, "dumps", spy)
    serialize(obj)
    assert used == [obj]

