"""``burst.enable_output()``: show remote output while a script runs an app, as Modal's
``modal.enable_output()``.

Example::

    with burst.enable_output():
        with app.run():
            square.remote(3)   # "squaring 3", printed in the container, shows here
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_depth = 0


@contextlib.contextmanager
def enable_output(show_progress: bool = True) -> Iterator[None]:
    """Inside the block, ``with app.run():`` prints what the app's containers print (tagged
    with the function's name) and its image builds. ``show_progress`` is accepted for
    Modal's signature; progress bars follow the terminal as before."""
    global _depth
    with _lock:
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1


def output_enabled() -> bool:
    """Whether some ``enable_output()`` block is open."""
    return _depth > 0
