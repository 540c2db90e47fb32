"""``Function``: a decorated function, callable locally or remotely."""

from __future__ import annotations

import contextvars
import functools
import inspect
import itertools
import json
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from burst import _trace, wire
from burst._aio import aio_method
from burst._serialization import deserialize, rebuild_exception, serialize
from burst.exception import (
    ExecutionError,
    FunctionTimeoutError,
    InputCancellation,
    InternalError,
    InvalidError,
)

if TYPE_CHECKING:
    from burst.app import App
    from burst.call_graph import InputInfo
    from burst.client import Client

#: Most inputs of one map in flight at once, and inputs sent per request.
MAP_MAX_OUTSTANDING = 1000
MAP_PAGE = 250
#: After one result arrives, how long a poll waits for more (fewer round trips; a poll
#: whose calls all finished returns at once). 50 ms measured ~10% more throughput on a
#: no-op map than 20 ms, in alternating runs on one cluster.
MAP_LINGER = 0.05

#: Seconds a map's pump waits at a time for the caller to take a result (when every slot
#: is held by one fetched and not yet taken), checking between waits whether to stop.
MAP_SLOT_WAIT = 0.2

#: What a map's pump hands the caller: (input index, response), its error, or None (done).
_Fetched = tuple[int, wire.CallResponse] | BaseException | None


@dataclass
class _Counts:
    """What a map's pump submitted so far (read by the progress display)."""

    submitted: int = 0
    exhausted: bool = False


P = ParamSpec("P")
R = TypeVar("R")


class Function(Generic[P, R]):
    """A function registered on an :class:`~burst.App`.

    Example::

        app = burst.App("demo")

        @app.function(cpu=1.0, memory=512)
        def square(x: int) -> int:
            return x * x

        square.local(3)    # 9, in this process
        square.remote(3)   # 9, in a container (inside `burst run` or `with app.run():`)
    """

    def __init__(self, raw_f: Callable[P, R], app: App | None, spec: wire.FunctionSpec) -> None:
        self.raw_f = raw_f
        self.app = app
        self.spec = spec
        self._client: Client | None = None
        self._app_name: str | None = None
        #: burst.Secret objects, read at deploy (see burst.app._with_secrets).
        self.secrets: list[Any] = []
        # Set on the handle of one method of one parametrized instance (see burst.cls).
        self._method: str | None = None
        self._params: dict[str, Any] = {}
        self._obj: Any = None
        #: The URL of each web endpoint, by name, as the deployment answered.
        self._web_urls: dict[str, str] = {}
        self.__doc__ = raw_f.__doc__
        self.__name__ = raw_f.__name__
        self.__qualname__ = raw_f.__qualname__
        self.__module__ = raw_f.__module__
        self.__wrapped__ = raw_f

    @property
    def name(self) -> str:
        return self.spec.name

    def __repr__(self) -> str:
        return f"<burst.Function {self.spec.name}>"

    @classmethod
    def from_name(cls, app_name: str, name: str, *,
                  client: Client | None = None) -> Function[..., Any]:
        """A handle on a function of a deployed app (no network call until it is used).

        Only deployed apps are found: an ephemeral run (``burst run``, ``app.run()``) has an
        id of its own, never its app's name, and its id is refused here."""
        try:
            wire.check_ident("app", app_name)
            wire.check_ident("function", name)
        except ValueError as e:
            raise InvalidError(str(e)) from None
        if wire.is_app_id(app_name):
            raise InvalidError(f"{app_name!r} is an ephemeral app's id: Function.from_name "
                               "finds deployed apps only, by name (`burst deploy`)")
        fn: Function[..., Any] = Function(_not_local, None, wire.FunctionSpec(
            name=name, module="", qualname=name))
        fn._app_name = app_name
        fn._client = client
        return fn

    def get_web_url(self) -> str | None:
        """The URL of this function's web endpoint (``@burst.fastapi_endpoint``,
        ``asgi_app``, ``wsgi_app``), or None if it has none. Built by the gateway from its
        externally visible base (``BURST_WEB_URL``), as ``burst deploy`` prints it."""
        local = self.app is not None or bool(self.spec.module)
        name = next((ep.name for ep in self.spec.web if ep.method == (self._method or "")),
                    None)
        if local and name is None:
            return None
        if name is not None and name in self._web_urls:
            return self._web_urls[name]
        client, app_name = self._target()
        status = client.get_json(f"/v1/apps/{app_name}/status")
        for fn in status.get("functions", []):
            if fn.get("function") != self.spec.name:
                continue
            urls: dict[str, str] = fn.get("web_urls") or {}
            if name is None and urls:  # a handle from from_name: its function's endpoint
                name = (f"{self.spec.name}-{self._method}" if self._method
                        else next(iter(urls)))
            if name in urls:
                self._web_urls[name] = str(urls[name])
                return self._web_urls[name]
        return None

    def bind_method(self, method: str, params: dict[str, Any], obj: Any) -> Function[..., Any]:
        """A handle calling ``method`` of the class instance with ``params``."""
        spec = self.spec
        raw_method = getattr(self.raw_f, method, None)
        if raw_method is not None and is_generator(raw_method) != spec.is_generator:
            # A generator method is called with .remote_gen (the class's spec says what
            # the class is, not each method).
            import msgspec

            spec = msgspec.structs.replace(spec, is_generator=is_generator(raw_method))
        fn: Function[..., Any] = Function(self.raw_f, self.app, spec)
        fn._client, fn._app_name = self._client, self._app_name
        fn._method, fn._params, fn._obj = method, params, obj
        fn._web_urls = self._web_urls
        return fn

    def _payload(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        if self._method is None:
            return serialize((args, kwargs))
        return serialize((args, kwargs, self._method, self._params))

    def _payload_or_ref(self, client: Client, args: tuple[Any, ...],
                        kwargs: dict[str, Any]) -> tuple[bytes, str]:
        """(inline payload, "") or (b"", blob reference) for a payload above the limit."""
        payload = self._payload(args, kwargs)
        if len(payload) <= wire.INLINE_PAYLOAD_LIMIT:
            return payload, ""
        return b"", client.put_blob(payload)

    # ---- calling -------------------------------------------------------------------
    def local(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function in this process."""
        if self._method is not None:
            return getattr(self._obj._local_instance(), self._method)(*args, **kwargs)  # type: ignore[no-any-return]
        return self.raw_f(*args, **kwargs)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.local(*args, **kwargs)

    @aio_method
    def remote(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function in a container and return its result (or raise its error)."""
        if self.spec.is_generator:
            raise InvalidError(f"{self.spec.name} is a generator function: use .remote_gen()")
        client, app_name = self._target()
        span = _trace.begin(client)
        resp = client.call(app_name, self.spec.name, *self._payload_or_ref(client, args, kwargs),
                           traceparent=span.traceparent if span else "")
        resp = client.wait_call(resp)
        if span is not None:
            _trace.end(client, span, resp.call_id, self.spec.name)
        follower = self.app._follower if self.app is not None else None
        if follower is not None:
            follower.wait_for(resp.call_id, resp.log_lines, resp.attempt)
        return self._result(resp, client)  # type: ignore[no-any-return]

    @functools.partial(aio_method, iterates=True)
    def remote_gen(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """Run a generator function in a container, yielding its items as they come.

        Example::

            for token in generate.remote_gen("prompt"):
                print(token, end="")
        """
        # (A function looked up by name is not known here: the call says what it is.)
        if not self.spec.is_generator and self.raw_f is not _not_local:
            raise InvalidError(f"{self.spec.name} is not a generator function: use .remote()")
        client, app_name = self._target()
        call_id = client.call(app_name, self.spec.name, *self._payload_or_ref(client, args, kwargs),
                              wait=0).call_id
        yield from self._items(client, call_id)

    @staticmethod
    def _items(client: Client, call_id: str) -> Iterator[Any]:
        cursor = 0
        while True:
            page = client.call_items(call_id, cursor, wait=30.0)
            cursor = page.cursor
            for item in page.items:
                yield deserialize(item)
            if page.final is not None:
                if page.final.status != "success":
                    Function._result(page.final)
                return

    @aio_method
    def spawn(self, *args: P.args, **kwargs: P.kwargs) -> FunctionCall[R]:
        """Start the function in a container and return at once with a handle on the call.

        Example::

            call = square.spawn(4)
            ...
            call.get(timeout=10)  # 16, or TimeoutError if not finished in 10 s
        """
        client, app_name = self._target()
        span = _trace.begin(client)
        resp = client.call(app_name, self.spec.name, *self._payload_or_ref(client, args, kwargs),
                           wait=0, traceparent=span.traceparent if span else "")
        if span is not None:
            _trace.end(client, span, resp.call_id, self.spec.name, "sdk.spawn")
        return FunctionCall(resp.call_id, client, resp)

    @aio_method
    def spawn_map(self, *input_iterators: Iterable[Any],
                  kwargs: dict[str, Any] | None = None) -> None:
        """Start one call per input (as ``map`` takes them) without waiting for results;
        the calls run on (for the outputs, see ``FunctionCall``s made with ``spawn``)."""
        for args in zip(*input_iterators, strict=False):
            self.spawn(*args, **(kwargs or {}))

    @functools.partial(aio_method, iterates=True)
    def map(self, *input_iterators: Iterable[Any], kwargs: dict[str, Any] | None = None,
            order_outputs: bool = True, return_exceptions: bool = False) -> Iterator[Any]:
        """Call the function once per element (zipped across iterables), in parallel.

        Results stream back as calls finish: in input order with ``order_outputs`` (the
        default), else as they complete. At most ``MAP_MAX_OUTSTANDING`` inputs are in
        flight, so a map over a million inputs never holds them all. A failed call
        raises its error, or is yielded as the exception with ``return_exceptions``.

        Example::

            for square in f.map(range(10)):
                print(square)
        """
        return self._map(zip(*input_iterators, strict=False), kwargs or {}, order_outputs,
                         return_exceptions)

    @functools.partial(aio_method, iterates=True)
    def starmap(self, input_iterator: Iterable[Sequence[Any]], kwargs: dict[str, Any] | None = None,
                order_outputs: bool = True, return_exceptions: bool = False) -> Iterator[Any]:
        """Like :meth:`map`, with each element unpacked as the call's arguments."""
        return self._map(iter(input_iterator), kwargs or {}, order_outputs, return_exceptions)

    @aio_method
    def for_each(self, *input_iterators: Iterable[Any], kwargs: dict[str, Any] | None = None,
                 ignore_exceptions: bool = False) -> None:
        """Like :meth:`map`, discarding the results (errors raise unless ignored)."""
        for _ in self._map(zip(*input_iterators, strict=False), kwargs or {}, False,
                           ignore_exceptions):
            pass

    def _map(self, arg_tuples: Iterator[Sequence[Any]], kwargs: dict[str, Any],
             order_outputs: bool, return_exceptions: bool) -> Iterator[Any]:
        client, app_name = self._target()
        progress = _Progress(f"map {self.spec.name}") if _Progress.enabled() else None
        span = _trace.begin(client)  # one sdk.map span, the parent of each page's
        first: list[str] = []
        try:
            yield from self._map_loop(client, app_name, arg_tuples, kwargs, order_outputs,
                                      return_exceptions, progress, span, first)
        finally:
            if progress is not None:
                progress.close()
            if span is not None and first:
                _trace.end(client, span, first[0], self.spec.name, "sdk.map",
                           {"burst.calls": len(first)})
                _trace.traced_calls.extend(first[1:])  # each input's trace has the map's

    def _map_loop(self, client: Client, app_name: str, arg_tuples: Iterator[Sequence[Any]],
                  kwargs: dict[str, Any], order_outputs: bool, return_exceptions: bool,
                  progress: _Progress | None, span: _trace.Span | None = None,
                  made: list[str] | None = None) -> Iterator[Any]:
        """The map's results, as :meth:`_map_pump` (a thread) fetches them: it fetches
        each as it finishes, whatever the pace of the loop over them (a map's results
        are transient: kept only ``BURST_TRANSIENT_RESULT_RETENTION`` seconds)."""
        results: queue.SimpleQueue[_Fetched] = queue.SimpleQueue()
        slots = threading.Semaphore(MAP_MAX_OUTSTANDING)
        stop = threading.Event()
        counts = _Counts()
        # In a copy of the caller's context: a map made in a container keeps its parent.
        pump = threading.Thread(
            target=contextvars.copy_context().run, daemon=True, name=f"burst-map-{self.name}",
            args=(self._map_pump, client, app_name, arg_tuples, kwargs, results, slots, stop,
                  counts, span, made))
        pump.start()
        ready: dict[int, Any] = {}
        next_out = finished = 0
        try:
            while True:
                got = results.get()
                if got is None:
                    return
                if isinstance(got, BaseException):
                    raise got  # the pump's error, in the caller's thread
                index, resp = got
                finished += 1
                if progress is not None:
                    progress.update(finished, counts.submitted, counts.exhausted)
                try:
                    value = self._result(resp, client)
                    if self.spec.is_generator:  # each input's items, as a list
                        value = list(self._items(client, resp.call_id))
                except Exception as exc:
                    if not return_exceptions:
                        raise
                    value = exc
                if not order_outputs:
                    slots.release()
                    yield value
                    continue
                ready[index] = value
                while next_out in ready:
                    slots.release()
                    yield ready.pop(next_out)
                    next_out += 1
        finally:
            stop.set()

    def _map_pump(self, client: Client, app_name: str, arg_tuples: Iterator[Sequence[Any]],
                  kwargs: dict[str, Any], results: queue.SimpleQueue[_Fetched],
                  slots: threading.Semaphore, stop: threading.Event, counts: _Counts,
                  span: _trace.Span | None = None, made: list[str] | None = None) -> None:
        """A map's pump (its own thread): submits inputs and fetches each result as it
        finishes into ``results`` (then None; or the error it met). An input takes one
        of ``slots`` (``MAP_MAX_OUTSTANDING``) until the caller takes its result: at most
        that many are in flight or fetched and not yet taken. Stops once ``stop`` is set."""
        try:
            self._pump(client, app_name, arg_tuples, kwargs, results, slots, stop, counts,
                       span, made)
        except BaseException as e:  # noqa: BLE001 (every error reaches the caller)
            results.put(e)
        else:
            results.put(None)

    def _pump(self, client: Client, app_name: str, arg_tuples: Iterator[Sequence[Any]],
              kwargs: dict[str, Any], results: queue.SimpleQueue[_Fetched],
              slots: threading.Semaphore, stop: threading.Event, counts: _Counts,
              span: _trace.Span | None, made: list[str] | None) -> None:
        # A generator's items are read after its output: not transient.
        transient = not self.spec.is_generator
        outstanding: dict[str, tuple[int, wire.CallRef]] = {}
        submitted = 0
        while not stop.is_set():
            while not counts.exhausted:
                room = 0
                while room < MAP_PAGE and slots.acquire(blocking=False):
                    room += 1
                if room == 0:
                    if outstanding:
                        break
                    # Nothing in flight, every slot held by a result not taken yet.
                    if not slots.acquire(timeout=MAP_SLOT_WAIT):
                        if stop.is_set():
                            return
                        continue
                    room = 1
                page = list(itertools.islice(arg_tuples, room))
                for _ in range(room - len(page)):
                    slots.release()
                if len(page) < room:
                    counts.exhausted = True
                if not page:
                    break
                refs = client.call_batch(app_name, self.spec.name,
                                         [self._payload(tuple(args), kwargs) for args in page],
                                         traceparent=span.traceparent if span else "",
                                         transient=transient)
                if made is not None:  # (for the map's span: each input under it)
                    made.extend(ref.call_id for ref in refs)
                for ref in refs:
                    outstanding[ref.call_id] = (submitted, ref)
                    submitted += 1
                counts.submitted = submitted
            if not outstanding:
                if counts.exhausted:
                    return
                continue
            refs = [ref for _, ref in outstanding.values()]
            for resp in client.wait_calls(refs, wait=30.0, linger=MAP_LINGER):
                entry = outstanding.pop(resp.call_id, None)
                if entry is not None:
                    results.put((entry[0], resp))

    def _target(self) -> tuple[Client, str]:
        if self._app_name is not None:
            if self._client is None:
                from burst.client import Client

                self._client = Client.from_profile()
            return self._client, self._app_name
        assert self.app is not None
        return self.app._running()

    @staticmethod
    def _result(resp: wire.CallResponse, client: Client | None = None) -> Any:
        if resp.payload_ref:
            if client is None:
                from burst.client import Client

                client = Client.from_profile()
            resp.payload = client.get_blob(resp.payload_ref)
        if resp.status == "success":
            return deserialize(resp.payload)
        if resp.status == "terminated":
            raise InputCancellation(resp.error_message or f"call {resp.call_id} was cancelled")
        if resp.status == "timeout":
            exc: BaseException = FunctionTimeoutError(resp.error_message)
            raise exc
        if resp.status == "failure" and resp.error_type == "burst.exception.ExecutionError":
            err = ExecutionError(resp.error_message)
            if resp.traceback:
                err.add_note(f"\nRemote traceback:\n{resp.traceback.rstrip()}")
            raise err
        if resp.status == "failure" and not resp.payload and \
                resp.error_type.startswith("burst.exception."):
            # A platform error the services stored without a pickled exception (a spent
            # hard budget): raised as its own class.
            import burst.exception as errors

            cls = getattr(errors, resp.error_type.rpartition(".")[2], None)
            if isinstance(cls, type) and issubclass(cls, errors.Error):
                raise cls(resp.error_message)
        if resp.status == "failure":
            raise rebuild_exception(resp.payload, resp.error_type, resp.error_message,
                                    resp.traceback)
        raise InternalError(f"call {resp.call_id} ended with status {resp.status!r}: "
                            f"{resp.error_message}")


def _not_local(*_: Any, **__: Any) -> Any:
    raise InvalidError("a function looked up by name can only be called with .remote()")


def is_generator(f: Callable[..., Any]) -> bool:
    return inspect.isgeneratorfunction(f) or inspect.isasyncgenfunction(f)


class FunctionCall(Generic[R]):
    """A handle on one call; fetch its result by id for as long as results are kept."""

    def __init__(self, call_id: str, client: Client | None = None,
                 last: wire.CallResponse | None = None) -> None:
        self.object_id = call_id
        self._client = client
        self._last = last

    def __repr__(self) -> str:
        return f"<burst.FunctionCall {self.object_id}>"

    @classmethod
    def from_id(cls, call_id: str, *, client: Client | None = None) -> FunctionCall[Any]:
        """A handle on a call made elsewhere (another process, another machine)."""
        return cls(call_id, client)

    def _c(self) -> Client:
        if self._client is None:
            from burst.client import Client

            self._client = Client.from_profile()
        return self._client

    @staticmethod
    def gather(*calls: FunctionCall[Any]) -> list[Any]:
        """The results of several calls, in order; the first error is raised.
        ``await FunctionCall.gather.aio(...)`` waits for them concurrently."""
        _check_calls(calls)
        return [c.get() for c in calls]

    @aio_method
    def cancel(self) -> bool:
        """Cancel the call: it never starts if it has not, and is stopped if it runs.

        Returns False when the call had already finished (its result stands).
        """
        _, data = self._c().request("DELETE", f"/v1/calls/{self.object_id}")
        return bool(json.loads(data).get("cancelled"))

    @aio_method
    def get_call_graph(self) -> list[InputInfo]:
        """The tree of calls this call belongs to, from its root call: calls made from
        inside a container are the children of the call that container ran."""
        from burst import call_graph

        _, data = self._c().request("GET", f"/v1/calls/{self.object_id}/graph")
        return [call_graph.from_api(json.loads(data))]

    @aio_method
    def get(self, timeout: float | None = None) -> R:
        """The call's result (or its error); waits up to ``timeout`` seconds (None: forever).

        Raises ``TimeoutError`` when the result is not ready in time; the call goes on.
        """
        client = self._c()
        resp = self._last
        if resp is None or resp.status == "pending":
            first_wait = 60.0 if timeout is None else min(timeout, 60.0)
            start = time.monotonic()
            resp = client.get_call(self.object_id, wait=first_wait)
            left = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
            if resp.status == "pending" and (left is None or left > 0):
                resp = client.wait_call(resp, left)
        if resp.status == "pending":
            raise TimeoutError(f"call {self.object_id} did not finish within {timeout:g} s")
        self._last = resp
        return Function._result(resp, client)  # type: ignore[no-any-return]


def _check_calls(calls: tuple[Any, ...]) -> None:
    for c in calls:
        if not isinstance(c, FunctionCall):
            raise InvalidError(f"FunctionCall.gather takes FunctionCall handles, not {c!r}")


async def _gather_aio(*calls: FunctionCall[Any]) -> list[Any]:
    import asyncio

    _check_calls(calls)
    return list(await asyncio.gather(*(c.get.aio() for c in calls)))


FunctionCall.gather.aio = _gather_aio  # type: ignore[attr-defined]


class _Progress:
    """A one-line progress display on stderr for maps run from the CLI on a terminal
    (no rich here: ``import burst`` stays light)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = time.monotonic()
        self.shown = 0.0

    @staticmethod
    def enabled() -> bool:
        import os
        import sys

        return os.environ.get("BURST_CLI") == "1" and sys.stderr.isatty()

    def update(self, done: int, submitted: int, exhausted: bool) -> None:
        now = time.monotonic()
        if now - self.shown < 0.1:
            return
        self.shown = now
        total = f"/{submitted}" if exhausted else f" of {submitted}+"
        rate = done / max(now - self.started, 1e-6)
        self._write(f"\r{self.label}: {done}{total} done ({rate:,.0f}/s)  ")

    def close(self) -> None:
        if self.shown:
            self._write("\n")

    @staticmethod
    def _write(text: str) -> None:
        """Write to the process's own stderr (``sys.stderr`` may be a tagging stream)."""
        import sys

        err = sys.__stderr__
        if err is not None:  # None only when Python started without a stderr
            err.write(text)
            err.flush()
