"""A local helper package that `multi_file.py` imports: shipped with the program."""

from textkit.normalize import normalize

__all__ = ["normalize"]
