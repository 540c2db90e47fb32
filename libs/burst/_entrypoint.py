"""Command-line options from an entrypoint's parameters, as ``modal run`` makes them.

``def main(n: int, name: str = "x", flag: bool = False, mode: Literal["a", "b"] = "a")``
becomes ``--n INTEGER`` (required), ``--name TEXT``, ``--flag/--no-flag`` and
``--mode [a|b]``. Parsing happens before anything is deployed, so bad input never leaves
an app running.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

import click

from burst.exception import InvalidError

#: Annotations an option can take, and the click type of each.
_SIMPLE: dict[Any, Any] = {
    str: click.STRING, int: click.INT, float: click.FLOAT, bool: click.BOOL,
}


class _LiteralChoice(click.Choice):  # type: ignore[type-arg]
    """``Literal["a", 1]``: the choices as written on the command line, the literal back."""

    def __init__(self, values: tuple[Any, ...]) -> None:
        self.values = {str(v): v for v in values}
        super().__init__(list(self.values))

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        return self.values[super().convert(str(value), param, ctx)]


def _unwrap_optional(ann: Any) -> Any:
    """``X | None`` and ``Optional[X]`` are options of type X."""
    origin = typing.get_origin(ann)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return ann


def _param_type(fn_name: str, p: inspect.Parameter, ann: Any) -> Any:
    if ann is inspect.Parameter.empty:
        if p.default is inspect.Parameter.empty or p.default is None:
            return str
        return type(p.default) if type(p.default) in _SIMPLE else str
    ann = _unwrap_optional(ann)
    if ann in _SIMPLE or typing.get_origin(ann) is Literal:
        return ann
    raise InvalidError(
        f"{fn_name}: parameter {p.name!r} is annotated {ann!r}; entrypoint parameters "
        "take str, int, float, bool or Literal[...] (they become command-line options)")


def options(f: Callable[..., Any], name: str, *, skip_first: bool = False) -> list[click.Option]:
    """The click options of ``f``'s parameters (``skip_first``: a method's ``self``)."""
    try:
        hints = typing.get_type_hints(f)
    except Exception:
        hints = {}
    params = list(inspect.signature(f).parameters.values())
    if skip_first:
        params = params[1:]
    out: list[click.Option] = []
    for p in params:
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise InvalidError(f"{name}: *{p.name} / **{p.name} cannot become command-line "
                               "options; name each parameter")
        if p.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise InvalidError(f"{name}: positional-only parameter {p.name!r} cannot become "
                               "a command-line option")
        ann = _param_type(name, p, hints.get(p.name, p.annotation))
        required = p.default is inspect.Parameter.empty
        # A required option gets no default at all (click counts even None as one).
        default: dict[str, Any] = {} if required else {"default": p.default}
        flag = p.name.replace("_", "-")
        decls = [f"--{flag}"] + ([f"--{p.name}"] if flag != p.name else [])
        if ann is bool:
            decls = [f"--{flag}/--no-{flag}"]
            out.append(click.Option([*decls, p.name], required=required,
                                    show_default=not required, **default))
            continue
        ctype = _LiteralChoice(typing.get_args(ann)) if typing.get_origin(ann) is Literal \
            else _SIMPLE[ann]
        out.append(click.Option([*decls, p.name], type=ctype, required=required,
                                show_default=default.get("default") is not None, **default))
    return out


def parse(f: Callable[..., Any], name: str, args: list[str], prog: str,
          *, skip_first: bool = False, help_text: str = "") -> dict[str, Any] | None:
    """``args`` parsed into ``f``'s keyword arguments; None when ``--help`` was asked for
    (the help is printed). Bad input raises :class:`click.UsageError`."""
    got: dict[str, Any] = {}
    cmd = click.Command(name, params=list(options(f, name, skip_first=skip_first)),
                        callback=lambda **kw: got.update(kw),
                        help=help_text or inspect.getdoc(f) or None,
                        context_settings={"help_option_names": ["--help", "-h"]})
    try:
        with cmd.make_context(prog, list(args)) as ctx:
            cmd.invoke(ctx)
    except click.exceptions.Exit:  # --help printed the options
        return None
    return got
