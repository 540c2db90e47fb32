"""Generator methods of a class are called with `.remote_gen`, as in Modal."""

from __future__ import annotations

import pytest

import burst
from burst.exception import InvalidError

app = burst.App("gen-methods")


@app.cls()
class Reader:
    @burst.method()
    def lines(self, n: int):
        yield from range(n)

    @burst.method()
    def count(self, n: int) -> int:
        return n


def test_a_generator_method_is_a_generator_and_the_other_is_not() -> None:
    assert Reader().lines.spec.is_generator
    assert not Reader().count.spec.is_generator
    assert not Reader.spec.is_generator  # the class's own spec is unchanged
    with pytest.raises(InvalidError, match="use .remote_gen()"):
        Reader().lines.remote(2)
    with pytest.raises(InvalidError, match=r"use .remote\(\)"):
        next(Reader().count.remote_gen(2))
    assert list(Reader().lines.local(3)) == [0, 1, 2]
