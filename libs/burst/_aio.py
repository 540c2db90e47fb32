"""``.aio`` variants: ``await f.remote.aio(...)``, ``async for r in f.map.aio(...)``.

The SDK's calls are blocking HTTP; their async variants run them on a worker thread, so
they never block the caller's event loop. asyncio is imported only when ``.aio`` is used.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any


class aio_method:  # noqa: N801 - used as a decorator
    """A method callable as ``obj.m(...)`` and as ``await obj.m.aio(...)``; with
    ``iterates=True`` the method returns an iterator and ``obj.m.aio(...)`` an async one."""

    def __init__(self, fn: Callable[..., Any], iterates: bool = False) -> None:
        self.fn = fn
        self.iterates = iterates
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        return _Bound(self, obj)


class _Bound:
    def __init__(self, method: aio_method, obj: Any) -> None:
        self._method = method
        self._obj = obj
        self.__doc__ = method.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._method.fn(self._obj, *args, **kwargs)

    def aio(self, *args: Any, **kwargs: Any) -> Any:
        if self._method.iterates:
            return _iterate_in_thread(lambda: self._method.fn(self._obj, *args, **kwargs))
        import asyncio

        return asyncio.to_thread(self._method.fn, self._obj, *args, **kwargs)


async def _iterate_in_thread(make: Callable[[], Iterator[Any]]) -> AsyncIterator[Any]:
    import asyncio

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=1024)
    stop = threading.Event()

    def produce() -> None:
        def put(item: tuple[str, Any]) -> None:
            asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

        try:
            for value in make():
                if stop.is_set():
                    return
                put(("item", value))
            put(("end", None))
        except BaseException as e:  # re-raised in the consumer
            put(("error", e))

    # In the caller's context: inside a container, the call it runs is the parent of
    # the calls the iterator makes.
    threading.Thread(target=contextvars.copy_context().run, args=(produce,),
                     name="burst-aio-iter", daemon=True).start()
    try:
        while True:
            kind, value = await queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
