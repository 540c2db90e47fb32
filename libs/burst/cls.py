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


def _parentheses(name: str, positional: Any) -> None:
    if positional is not None:
        raise InvalidError(f"use @burst.{name}() with parentheses (it takes no positional "
                           "arguments)")


def enter(_warn_parentheses_missing: Any = None, *, snap: bool = False) -> Callable[[F], F]:
    """Mark a method to run once when the container starts (load a model here).

    ``snap=True`` hooks (Modal's, run before a memory snapshot) run before the others;
    Burst takes no snapshots, so both kinds run at every container start."""
    _parentheses("enter", _warn_parentheses_missing)

    def mark(f: F) -> F:
        setattr(f, _ENTER, "snap" if snap else True)
        return f

    return mark


def exit(_warn_parentheses_missing: Any = None) -> Callable[[F], F]:  # noqa: A001 - Modal's name
    """Mark a method to run when the container stops (scale-down, preemption, shutdown)."""
    _parentheses("exit", _warn_parentheses_missing)

    def mark(f: F) -> F:
        setattr(f, _EXIT, True)
        return f

    return mark


def method(_warn_parentheses_missing: Any = None, *,
           is_generator: bool | None = None) -> Callable[[F], F]:
    """Mark a method callable remotely: ``Model().predict.remote(x)``. A generator method
    is called with ``.remote_gen`` (``is_generator`` is Modal's; Burst tells by itself)."""
    _parentheses("method", _warn_parentheses_missing)

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
    """The methods marked ``mark``, in definition order (``@enter(snap=True)`` ones first)."""
    found = [(name, v) for name, v in vars(user_cls).items()
             if callable(v) and getattr(v, mark, False)]
    return [name for name, v in sorted(found, key=lambda nv: getattr(nv[1], mark) != "snap")]


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

    def __init__(self, user_cls: type, function: Any,
                 options: dict[str, Any] | None = None) -> None:
        self.user_cls = user_cls
        self._function = function  # a burst Function whose spec is the class's
        self._options = dict(options or {})  # what @app.cls() was given
        #: Variants made by with_options/with_concurrency/with_batching, by function name
        #: (the container of a variant finds it here: its qualname is ``Model@name``).
        self._variants: dict[str, Cls] = {}
        #: (max_batch_size, wait_ms) for every method of a with_batching variant.
        self._batching: tuple[int, int] | None = None
        self._root: Cls | None = None  # the Cls a variant was made from
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

    def with_options(self, **options: Any) -> Cls:
        """The class with other options (those of ``@app.cls()``: cpu, memory, gpu,
        timeout, retries, scaledown_window, min/max/buffer_containers, ...).

        The variant is a function of its own in the app, so make it where the app is
        defined (at module level), before the app runs: ``burst run`` and ``deploy``
        then deploy it with the rest.
        """
        if "schedule" in options or "name" in options:
            bad = "schedule" if "schedule" in options else "name"
            raise InvalidError(f"with_options() does not take {bad}=")
        return self._variant({**self._options, **options}, None)

    def with_concurrency(self, *, max_inputs: int, target_inputs: int | None = None) -> Cls:
        """The class with ``@burst.concurrent(max_inputs=..., target_inputs=...)``."""
        from burst.concurrency import concurrent

        mark = concurrent(max_inputs=max_inputs, target_inputs=target_inputs)(lambda: None)
        return self._variant(self._options, mark.__burst_concurrency__)  # type: ignore[attr-defined]

    def with_batching(self, *, max_batch_size: int, wait_ms: int) -> Cls:
        """The class with ``@burst.batched(max_batch_size=..., wait_ms=...)`` on every
        method: each takes a list and returns a list; callers pass single items."""
        from burst.concurrency import batched

        batched(max_batch_size=max_batch_size, wait_ms=wait_ms)(lambda: None)  # checks them
        return self._variant(self._options, (max_batch_size, max_batch_size),
                             (max_batch_size, wait_ms))

    def _variant(self, options: dict[str, Any], concurrency: tuple[int, int] | None,
                 batching: tuple[int, int] | None = None) -> Cls:
        import hashlib

        app = self._function.app
        if app is None:
            raise InvalidError(f"{self.user_cls.__name__} was looked up by name: with_options() "
                               "needs the class as defined with @app.cls()")
        key = repr(sorted(options.items())) + repr(concurrency) + repr(batching)
        base = self.spec.name.split("--", 1)[0]
        name = f"{base}--{hashlib.sha256(key.encode()).hexdigest()[:8]}"
        existing = app.registered_functions.get(name)
        if existing is None:
            if app._client is not None:
                raise InvalidError(
                    f"{self.user_cls.__name__}.with_options()/with_concurrency() with new "
                    f"options was called while app {app.name!r} runs: call it at module level, "
                    "where the app is defined, so the variant is deployed with the app")
            fn = app.function(**{**options, "name": name})(self.user_cls)
            fn.spec.is_class = True
            fn.spec.qualname = f"{self.user_cls.__qualname__}@{name}"
            fn.spec.max_inputs, fn.spec.target_inputs = concurrency or (
                self.spec.max_inputs, self.spec.target_inputs)
        else:
            fn = existing
        root = self._root or self
        variant = root._variants.get(name)
        if variant is None:
            variant = root._variants[name] = Cls(self.user_cls, fn, options)
            variant._root = root
            variant._batching = batching
        return variant

    @staticmethod
    def from_name(app_name: str, name: str) -> _DeployedCls:
        """A handle on class ``name`` of a deployed app (no network call until a method
        is called): ``Cls.from_name("app", "Model")(size=2).predict.remote(x)``."""
        from burst.functions import Function

        return _DeployedCls(Function.from_name(app_name, name.lower()))  # as deployed

    def variant(self, name: str) -> Cls:
        """The variant deployed as function ``name`` (what a container of it runs)."""
        try:
            return self._variants[name]
        except KeyError:
            raise InvalidError(
                f"{self.user_cls.__name__} has no variant {name!r} here: make with_options() "
                "variants at module level, where the app is defined") from None


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


class _DeployedCls:
    """A class of a deployed app looked up by name: its methods are called remotely only."""

    def __init__(self, function: Any) -> None:
        self._function = function

    def __repr__(self) -> str:
        return f"<burst.Cls {self._function.spec.name} (by name)>"

    def __call__(self, **params: Any) -> _DeployedObj:
        return _DeployedObj(self._function, params)


class _DeployedObj:
    def __init__(self, function: Any, params: dict[str, Any]) -> None:
        self._function = function
        self._params = params

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._function.bind_method(name, self._params, self)

    def _local_instance(self) -> Any:
        raise InvalidError("a class looked up by name can only be called with .remote()")
