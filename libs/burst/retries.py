"""Retry policies, validated at construction with Modal's ranges."""

from __future__ import annotations

from burst.exception import InvalidError
from burst.wire import RetryPolicy


class Retries:
    """How a failed call is retried: delays grow by ``backoff_coefficient`` from
    ``initial_delay`` up to ``max_delay`` seconds.

    A failure is the function raising, running past its timeout, or its container dying
    (out of memory, a crash) while it runs. Platform faults (a lost agent, preemption)
    are retried apart from this budget.

    Example::

        @app.function(retries=burst.Retries(max_retries=3, initial_delay=0.5))
        def flaky(): ...
    """

    def __init__(self, *, max_retries: int, backoff_coefficient: float = 2.0,
                 initial_delay: float = 1.0, max_delay: float = 60.0) -> None:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise InvalidError(f"max_retries={max_retries!r} is invalid: use an integer >= 0")
        _check("backoff_coefficient", backoff_coefficient, 1.0, 10.0)
        _check("initial_delay", initial_delay, 0.0, 60.0)
        _check("max_delay", max_delay, 1.0, 60.0)
        self.max_retries = max_retries
        self.backoff_coefficient = float(backoff_coefficient)
        self.initial_delay = float(initial_delay)
        self.max_delay = float(max_delay)

    def __repr__(self) -> str:
        return (f"Retries(max_retries={self.max_retries}, backoff_coefficient="
                f"{self.backoff_coefficient}, initial_delay={self.initial_delay}, "
                f"max_delay={self.max_delay})")

    def policy(self) -> RetryPolicy:
        return RetryPolicy(max_retries=self.max_retries,
                           backoff_coefficient=self.backoff_coefficient,
                           initial_delay=self.initial_delay, max_delay=self.max_delay)

    @classmethod
    def coerce(cls, value: int | Retries | None) -> Retries | None:
        """``retries=N`` means N retries one second apart; None means none."""
        if value is None:
            return None
        if isinstance(value, Retries):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(max_retries=value, backoff_coefficient=1.0, initial_delay=1.0)
        raise InvalidError(f"retries={value!r} is invalid: use an int or burst.Retries(...)")


def _check(name: str, value: object, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise InvalidError(f"{name}={value!r} is out of range: allowed {lo:g} to {hi:g}")
