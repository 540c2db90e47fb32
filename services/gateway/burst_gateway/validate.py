"""Names in request paths, checked at the edge with the one rule every name follows
(:func:`burst_core.names.check_ident`, the SDK's too).

App and function names become parts of NATS subjects and KV keys: a name such as ``>`` or
``a b`` would otherwise reach NATS and fail there. Every route gets this check (an
application-wide dependency, :func:`burst_gateway.app.create_app`), and the SDK's fast
path (:mod:`burst_gateway.fastcalls`) the same one, so both answer a bad name with the same
400 naming it and what is allowed. :func:`check_text` refuses stored text that is not
Unicode.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import Request

from burst.exception import InvalidError
from burst_core import names

#: Path parameters that hold a name, and the kind each is called in messages.
PATH_NAMES = {"app": "app", "fn": "function"}


def check_name(kind: str, value: str) -> str:
    """``value`` if it is a valid ``kind`` name, else the 400 naming it and the rule."""
    try:
        return names.check_ident(kind, value)
    except ValueError as e:
        raise InvalidError(str(e)) from None


def check_path_names(params: Mapping[str, str]) -> None:
    for param, kind in PATH_NAMES.items():
        value = params.get(param)
        if value is not None:
            check_name(kind, value)


async def path_names(request: Request) -> None:
    """The application-wide dependency: every name in the request's path is valid."""
    check_path_names(request.path_params)


def check_text(field: str, value: str) -> str:
    """``value`` if it is text that can be stored and answered (UTF-8), else a 400: JSON's
    ``"\\ud800"`` escape gives a lone surrogate, which no store or answer can encode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidError(f"{field}: character {value[e.start]!r} at position {e.start} is "
                           "a lone surrogate, not text: send valid Unicode") from None
    return value
