"""Burst: serverless compute for Python on machines you own.

``import burst`` stays light: it loads the SDK only (msgspec and cloudpickle); the CLI and
the services import their heavier dependencies themselves.
"""

from burst import exception
from burst.app import App
from burst.cls import Cls, enter, exit, method, parameter
from burst.concurrency import batched, concurrent
from burst.functions import Function, FunctionCall
from burst.image import Image
from burst.objects import Dict, Queue
from burst.retries import Retries
from burst.schedules import Cron, Period

__version__ = "0.1.0"
__all__ = ["App", "Cls", "Cron", "Dict", "Function", "FunctionCall", "Image", "Retries", "batched",
           "concurrent", "enter", "exception", "exit", "method", "parameter", "Period", "Queue",
           "__version__"]
