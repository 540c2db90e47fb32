"""``burst.dict``: the module path Modal programs import ``Dict`` from."""

from burst.objects import Dict

__all__ = ["Dict"]
