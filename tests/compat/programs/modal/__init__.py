"""``import modal`` for the compatibility programs: Modal's package name onto Burst.

This is what a user moving a Modal program over does instead of editing it: a tiny
``modal`` package next to the program that re-exports Burst. It lives in the programs'
directory, so ``burst run`` ships it with each program's source and containers import it
too.
"""

import importlib
import sys
from typing import Any

import burst
from burst import *  # noqa: F403

# Modal's module paths (`from modal.exception import ...`, `modal.functions.FunctionCall`)
# name Burst's own modules, so classes keep one identity (an `except` clause matches).
for _sub in ("app", "cls", "dict", "exception", "functions", "queue", "retries"):
    sys.modules[f"{__name__}.{_sub}"] = importlib.import_module(f"burst.{_sub}")


def __getattr__(name: str) -> Any:
    # Everything else is Burst's, including the errors for names Burst has not built.
    return getattr(burst, name)
