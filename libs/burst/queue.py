"""``burst.queue``: the module path Modal programs import ``Queue`` from."""

from burst.objects import Queue

__all__ = ["Queue"]
