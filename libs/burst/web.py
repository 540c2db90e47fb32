"""Web endpoints, with Modal's names: ``fastapi_endpoint`` (``web_endpoint``), ``asgi_app``,
``wsgi_app`` and ``web_server``.

Each decorator goes below ``@app.function()`` (or on a method of an ``@app.cls()``) and
marks the function; the app's deployment then carries a :class:`burst.wire.WebEndpoint`
for it, and the gateway serves it on its web port under
``http://HOST:WEBPORT/{workspace}/{app}/{label or function name}/``.

Example::

    @app.function()
    @burst.fastapi_endpoint(method="POST")
    def square(x: int) -> dict:
        return {"square": x * x}

    @app.function()
    @burst.asgi_app(label="api")
    def api():
        from fastapi import FastAPI
        web = FastAPI()

        @web.get("/hello")
        def hello() -> str:
            return "hi"
        return web

As in Modal, the function's image needs the framework it uses (FastAPI for
``fastapi_endpoint``, Flask for a Flask ``wsgi_app``); only web functions import it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from burst import wire
from burst.concurrency import _mark_method
from burst.exception import InvalidError

F = TypeVar("F", bound=Callable[..., Any])

#: The attribute a decorated function carries: its ``WebEndpoint`` (name still unset).
MARK = "__burst_web__"
_HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


def _label(label: str | None) -> str:
    if label is None:
        return ""
    try:
        return wire.check_label(label)
    except ValueError as e:
        raise InvalidError(str(e)) from None


def _mark(kind: str, label: str | None, requires_proxy_auth: bool, **extra: Any,
          ) -> Callable[[F], F]:
    endpoint = wire.WebEndpoint(kind=kind, name="", label=_label(label),
                                requires_proxy_auth=bool(requires_proxy_auth), **extra)

    def decorator(f: F) -> F:
        if hasattr(f, "spec"):
            raise InvalidError(f"put @burst.{_DECORATOR[kind]}() below @app.function(), next "
                               "to the def")
        if not callable(f):
            raise InvalidError(f"@burst.{_DECORATOR[kind]}() needs a function, got {f!r}")
        if getattr(f, MARK, None) is not None:
            raise InvalidError(f"{f.__qualname__} already has a web decorator")
        if kind != "fastapi":
            _check_app_factory(kind, f)
        setattr(f, MARK, endpoint)
        _mark_method(f)
        return f

    return decorator


def _check_app_factory(kind: str, f: Callable[..., Any]) -> None:
    """An ``asgi_app``/``wsgi_app``/``web_server`` function is called once per container
    with no arguments, and must return the app (not a coroutine): wrong at deploy time
    rather than when the container starts."""
    what = f"@burst.{_DECORATOR[kind]}() function {getattr(f, '__qualname__', f)!r}"
    if inspect.iscoroutinefunction(f):
        raise InvalidError(f"{what} is async: make it a plain def that "
                           + ("starts the server" if kind == "web_server" else "returns the app"))
    try:
        params = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):
        return
    if params and params[0].name == "self":
        params = params[1:]
    required = [p.name for p in params if p.default is p.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required:
        raise InvalidError(f"{what} takes parameters ({', '.join(required)}): it is called "
                           "with none, once per container")


_DECORATOR = {"fastapi": "fastapi_endpoint", "asgi": "asgi_app", "wsgi": "wsgi_app",
              "web_server": "web_server"}


def fastapi_endpoint(_warn_parentheses_missing: Any = None, *, method: str = "GET",
                     label: str | None = None, docs: bool = False,
                     custom_domains: Any = None,
                     requires_proxy_auth: bool = False) -> Callable[[F], F]:
    """Serve the function as one FastAPI route: its parameters are query parameters (or,
    typed with a pydantic model or ``dict``, a JSON body), its return value the JSON
    response. ``method`` is the route's HTTP method; ``docs=True`` serves FastAPI's
    ``/docs``; ``label`` names the URL part (default: the function's name)."""
    if _warn_parentheses_missing is not None:
        raise InvalidError("use @burst.fastapi_endpoint() with parentheses")
    if custom_domains:
        from burst import _unsupported

        raise _unsupported.refuse("custom_domains=")
    if not isinstance(method, str) or method.upper() not in _HTTP_METHODS:
        raise InvalidError(f"method={method!r} is not an HTTP method: use one of "
                           f"{', '.join(_HTTP_METHODS)}")
    return _mark("fastapi", label, requires_proxy_auth, http_method=method.upper(),
                 docs=bool(docs))


def web_endpoint(_warn_parentheses_missing: Any = None, *, method: str = "GET",
                 label: str | None = None, docs: bool = False, custom_domains: Any = None,
                 requires_proxy_auth: bool = False) -> Callable[[F], F]:
    """The older name of :func:`fastapi_endpoint`."""
    return fastapi_endpoint(_warn_parentheses_missing, method=method, label=label, docs=docs,
                            custom_domains=custom_domains,
                            requires_proxy_auth=requires_proxy_auth)


def asgi_app(_warn_parentheses_missing: Any = None, *, label: str | None = None,
             custom_domains: Any = None, requires_proxy_auth: bool = False,
             ) -> Callable[[F], F]:
    """Serve the ASGI app (FastAPI, Starlette, ...) the function returns; it is called
    once per container, after ``@burst.enter()``."""
    if _warn_parentheses_missing is not None:
        raise InvalidError("use @burst.asgi_app() with parentheses")
    if custom_domains:
        from burst import _unsupported

        raise _unsupported.refuse("custom_domains=")
    return _mark("asgi", label, requires_proxy_auth)


def wsgi_app(_warn_parentheses_missing: Any = None, *, label: str | None = None,
             custom_domains: Any = None, requires_proxy_auth: bool = False,
             ) -> Callable[[F], F]:
    """Serve the WSGI app (Flask, Django, ...) the function returns; it is called once
    per container and runs on threads of the container."""
    if _warn_parentheses_missing is not None:
        raise InvalidError("use @burst.wsgi_app() with parentheses")
    if custom_domains:
        from burst import _unsupported

        raise _unsupported.refuse("custom_domains=")
    return _mark("wsgi", label, requires_proxy_auth)


def web_server(port: int, *, startup_timeout: float = 5.0, label: str | None = None,
               custom_domains: Any = None, requires_proxy_auth: bool = False,
               ) -> Callable[[F], F]:
    """Serve a server the function starts (a subprocess, a thread) listening on ``port``
    inside the container: the function is called once per container, then the container
    is ready once something accepts connections on ``127.0.0.1:port`` (within
    ``startup_timeout`` seconds). Requests reach it at the path below the endpoint's URL,
    with the URL's prefix in ``X-Forwarded-Prefix``.

    Example::

        @app.function()
        @burst.web_server(8000)
        def files():
            import subprocess
            subprocess.Popen(["python", "-m", "http.server", "8000"])
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidError(f"web_server: port={port!r} is out of range: allowed 1 to 65535")
    if isinstance(startup_timeout, bool) or not isinstance(startup_timeout, int | float) or (
            not 0 < startup_timeout <= 3600):
        raise InvalidError(f"web_server: startup_timeout={startup_timeout!r} is out of range: "
                           "allowed above 0 up to 3600 s")
    if custom_domains:
        from burst import _unsupported

        raise _unsupported.refuse("custom_domains=")
    return _mark("web_server", label, requires_proxy_auth, port=port,
                 startup_timeout=float(startup_timeout))


def endpoint_of(f: Any, name: str, method: str = "") -> wire.WebEndpoint | None:
    """The endpoint ``f`` was marked with, named for the URL (its label, else ``name``),
    or None for a plain function."""
    mark: wire.WebEndpoint | None = getattr(f, MARK, None)
    if mark is None:
        return None
    url_name = mark.label or name.lower()
    return wire.WebEndpoint(kind=mark.kind, name=url_name, method=method,
                            http_method=mark.http_method, docs=mark.docs, label=mark.label,
                            requires_proxy_auth=mark.requires_proxy_auth, port=mark.port,
                            startup_timeout=mark.startup_timeout)


def check_unique(endpoints: list[wire.WebEndpoint], app: str | None) -> None:
    """Two endpoints of one app answering one URL: an error naming both."""
    seen: dict[str, wire.WebEndpoint] = {}
    for ep in endpoints:
        other = seen.get(ep.name)
        if other is not None:
            raise InvalidError(f"app {app!r}: two web endpoints answer under {ep.name!r} "
                               "(give one of them another label=)")
        seen[ep.name] = ep
