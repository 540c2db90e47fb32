"""``@app.cls``: a class whose instance lives in the container, with lifecycle hooks.

    @app.cls(cpu=1.0)
    class Model:
        size: int = burst.parameter(default=1)

        @burst.enter()
        def load(self):          # once per container (per parameter set), before inputs
            self.weights = ...

        @burst.method()
        def predict(self, x):
            return ...

        @burst.exit()
        def close(self):         # when the container stops
            ...

    Model().predict.remote(3)
    Model(size=2).predict.map(range(10))

A method call travels as the function's payload ``(args, kwargs, method, params)``: the
services never look inside it. One container holds one instance per parameter set it has
served (the instance without parameters is created, and its ``@enter`` run, at start).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from burst.exception import InvalidError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_ENTER, _EXIT, _METHOD = "__burst_enter__", "__burst_exit__", "__burst_method__"
_MISSING = object()


def enter() -> Callable[[F], F]:
    """Mark a method to run once when the container starts (load a model here)."""

    def mark(f: F) -> F:
        setattr(f, _ENTER, True)
        return f

    return mark


def exit() -> Callable[[F], F]:  # noqa: A001 - Modal's name
    """Mark a method to run when the container stops (scale-down, preemption, shutdown)."""

    def mark(f: F) -> F:
        setattr(f, _EXIT, True)
        return f

    return mark


def method() -> Callable[[F], F]:
    """Mark a method callable remotely: ``Model().predict.remote(x)``."""

    def mark(f: F) -> F:
        setattr(f, _METHOD, True)
        return f

    return mark


class _Parameter:
    def __init__(self, default: Any) -> None:
        self.default = default


def parameter(*, default: Any = _MISSING) -> Any:
    """Declare a class parameter: ``size: int = burst.parameter(default=1)``."""
    return _Parameter(default)


def parameters_of(user_cls: type) -> dict[str, Any]:
    """name -> default (``_MISSING`` when required) of a class's declared parameters."""
    return {k: v.default for k, v in vars(user_cls).items() if isinstance(v, _Parameter)}


def hooks(user_cls: type, mark: str) -> list[str]:
    return [name for name, v in vars(user_cls).items() if callable(v) and getattr(v, mark, False)]


def make_instance(user_cls: type[T], params: dict[str, Any]) -> T:
    """An instance with its parameters set and its ``@enter`` methods run."""
    declared = parameters_of(user_cls)
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise InvalidError(f"{user_cls.__name__} has no parameter {unknown[0]!r} "
                           f"(it has: {', '.join(declared) or 'none'})")
    obj = user_cls.__new__(user_cls)
    for name, default in declared.items():
        value = params.get(name, default)
        if value is _MISSING:
            raise InvalidError(f"{user_cls.__name__} needs parameter {name!r}")
        setattr(obj, name, value)
    for name in hooks(user_cls, _ENTER):
        getattr(obj, name)()
    return obj


def run_exit(obj: Any) -> None:
    for name in hooks(type(obj), _EXIT):
        getattr(obj, name)()


class Cls:
    """What ``@app.cls`` returns: call it with parameters to get a handle on instances."""

    def __init__(self, user_cls: type, function: Any) -> None:
        self.user_cls = user_cls
        self._function = function  # a burst Function whose spec is the class's
        self.methods = hooks(user_cls, _METHOD)
        if not self.methods:
            raise InvalidError(f"class {user_cls.__name__} has no @burst.method()")
        self.__name__ = user_cls.__name__
        self.__qualname__ = user_cls.__qualname__
        self.__module__ = user_cls.__module__
        self.__doc__ = user_cls.__doc__

    @property
    def spec(self) -> Any:
        return self._function.spec

    def __call__(self, **params: Any) -> _Obj:
        declared = parameters_of(self.user_cls)
        for name in params:
            if name not in declared:
                raise InvalidError(f"{self.user_cls.__name__} has no parameter {name!r} "
                                   f"(it has: {', '.join(declared) or 'none'})")
        for name, default in declared.items():
            if default is _MISSING and name not in params:
                raise InvalidError(f"{self.user_cls.__name__} needs parameter {name!r}")
        return _Obj(self, params)

    def __repr__(self) -> str:
        return f"<burst.Cls {self.user_cls.__name__}>"


class _Obj:
    def __init__(self, cls: Cls, params: dict[str, Any]) -> None:
        self._cls = cls
        self._params = params
        self._local: Any = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._cls.methods:
            raise AttributeError(f"{self._cls.user_cls.__name__} has no @burst.method() {name!r}")
        return self._cls._function.bind_method(name, self._params, self)

    def _local_instance(self) -> Any:
        if self._local is None:
            self._local = make_instance(self._cls.user_cls, self._params)
        return self._local
