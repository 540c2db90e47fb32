"""Burst: serverless compute for Python on machines you own.

``import burst`` stays light: it loads the SDK only (msgspec and cloudpickle); the CLI and
the services import their heavier dependencies themselves.
"""

from typing import Any

from burst import _unsupported, exception
from burst._context import current_call as _current_call
from burst._context import current_input as _current_input
from burst.app import App
from burst.cls import Cls, enter, exit, method, parameter
from burst.concurrency import batched, concurrent
from burst.exception import Error
from burst.functions import Function, FunctionCall
from burst.image import Image
from burst.objects import Dict, Queue
from burst.output import enable_output
from burst.retries import Retries
from burst.schedules import Cron, Period
from burst.secret import Secret
from burst.volume import Volume
from burst.web import asgi_app, fastapi_endpoint, web_endpoint, web_server, wsgi_app

__version__ = "0.1.0"
__all__ = ["App", "Cls", "Cron", "Dict", "Error", "Function", "FunctionCall", "Image", "Retries",
           "batched", "concurrent", "current_function_call_id", "current_input_id",
           "enable_output", "enter",
           "exception", "exit", "is_local", "method", "parameter", "Period", "Queue", "Secret",
           "Volume",
           "asgi_app", "fastapi_endpoint", "web_endpoint", "web_server", "wsgi_app",
           "__version__"]


def is_local() -> bool:
    """True in a client (a script, ``burst run``), False inside a function's container."""
    from burst import _context

    return _context.platform is None


def current_input_id() -> str | None:
    """The id of the input this code is running for, inside a container; None elsewhere."""
    return _current_input.get() or None


def current_function_call_id() -> str | None:
    """The id of the call this code is running for, inside a container; None elsewhere."""
    return _current_call.get() or None


def __getattr__(name: str) -> Any:
    if name in _unsupported.NAMES:
        raise _unsupported.refuse(f"burst.{name}")
    raise AttributeError(f"module 'burst' has no attribute {name!r}")
