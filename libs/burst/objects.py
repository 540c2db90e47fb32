"""``burst.Dict`` and ``burst.Queue``: named state shared by containers and clients.

Both are lazy: ``from_name`` makes no network call, so module-level handles work in the
client and while a container imports the module. Inside a container, operations go
through the agent (the container has no route and no token to the cluster); elsewhere
through the gateway. Keys and values travel as cloudpickle.

Example::

    counts = burst.Dict.from_name("counts", create_if_missing=True)
    jobs = burst.Queue.from_name("jobs", create_if_missing=True)

    @app.function()
    def work():
        job = jobs.get(timeout=5)
        counts[job] = counts.get(job, 0) + 1
"""

from __future__ import annotations

import functools
import queue as _queue
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import msgspec

from burst import _context, wire
from burst._aio import aio_method
from burst._serialization import deserialize, serialize
from burst.exception import InvalidError

if TYPE_CHECKING:
    from burst.client import Client

_MISSING = object()


def _call(kind: str, req: msgspec.Struct, timeout: float | None = None) -> bytes:
    body = wire.encode(req)
    if _context.platform is not None:
        return _context.platform.request(kind, body, timeout)
    client = _client()
    _, data = client.request("POST", f"/v1/{kind}s", body, wire.MSGPACK)
    return data


_clients: list[Client] = []


def _client() -> Client:
    if not _clients:
        from burst.client import Client

        _clients.append(Client.from_profile())
    return _clients[0]


#: Largest batch one request fetches; ``get_many`` asks again for more.
_GET_CHUNK = 1000


def _ephemeral_name(kind: str) -> str:
    return f"eph-{kind}-{secrets.token_hex(8)}"


@contextmanager
def _owned() -> Iterator[str]:
    """In a client: hold the process's heartbeat for an ephemeral object's block and yield
    the client id it is tied to (the cluster removes the object if this process dies).
    Inside a container: "" (the object lives for its block only)."""
    if _context.platform is not None:
        yield ""
        return
    from burst import _heartbeat

    with _heartbeat.held(_client()) as client_id:
        yield client_id


def _check(kind: str, name: str) -> str:
    try:
        return wire.check_ident(kind, name)
    except ValueError as e:
        raise InvalidError(str(e)) from None


class _Object:
    kind = ""

    def __init__(self, name: str, create_if_missing: bool) -> None:
        self.name = _check(self.kind, name)
        self.create_if_missing = create_if_missing
        self._ended = False  # an ephemeral object whose block has ended
        self._client_id = ""  # an ephemeral object's client (ties it to its heartbeat)

    def __repr__(self) -> str:
        return f"<burst.{self.kind.capitalize()} {self.name}>"

    def _alive(self) -> None:
        if self._ended:
            raise InvalidError(f"{self.kind} {self.name!r} was ephemeral and was removed when its "
                               f"`with burst.{self.kind.capitalize()}.ephemeral()` block ended; "
                               "use it only inside that block")


class Dict(_Object):
    """A named key-value store of the workspace (keys and values: anything picklable).

    ``Dict.ephemeral()`` makes one that lives for a ``with`` block. Handles pickle by name,
    so they can be passed into functions as arguments. Every method has ``.aio``.
    """

    kind = "dict"

    @classmethod
    def from_name(cls, name: str, *, create_if_missing: bool = False) -> Dict:
        return cls(name, create_if_missing)

    @classmethod
    @contextmanager
    def ephemeral(cls, data: dict[Any, Any] | None = None) -> Iterator[Dict]:
        """A new Dict (holding ``data``) removed with its contents when the block ends."""
        d = cls(_ephemeral_name("dict"), True)
        with _owned() as client_id:
            d._client_id = client_id
            d._op("ensure")
            # Made now: a copy passed to a function that outlives the block finds it gone
            # (NotFoundError) instead of making it again.
            d.create_if_missing = False
            try:
                if data:
                    d.update(data)
                yield d
            finally:
                try:
                    d._op("delete")
                finally:
                    d._ended = True

    def _op(self, op: str, key: Any = _MISSING, value: Any = _MISSING,
            skip_if_exists: bool = False) -> wire.DictResponse:
        self._alive()
        req = wire.DictRequest(name=self.name, op=op,  # type: ignore[arg-type]
                                key=b"" if key is _MISSING else serialize(key),
                                value=b"" if value is _MISSING else serialize(value),
                                create_if_missing=self.create_if_missing,
                                skip_if_exists=skip_if_exists,
                                client_id=self._client_id if op in ("ensure", "delete") else "")
        return wire.dict_response_decoder.decode(_call("dict", req))

    def __setitem__(self, key: Any, value: Any) -> None:
        self._op("put", key, value)

    @aio_method
    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool:
        """Store ``value`` under ``key``; with ``skip_if_exists`` an existing value stays.
        Returns whether the value was written."""
        return self._op("put", key, value, skip_if_exists=skip_if_exists).found

    @aio_method
    def update(self, other: dict[Any, Any] | None = None, **kwargs: Any) -> None:
        for k, v in {**(other or {}), **kwargs}.items():
            self._op("put", k, v)

    def __getitem__(self, key: Any) -> Any:
        resp = self._op("get", key)
        if not resp.found:
            raise KeyError(key)
        return deserialize(resp.value)

    @aio_method
    def get(self, key: Any, default: Any = None) -> Any:
        resp = self._op("get", key)
        return deserialize(resp.value) if resp.found else default

    def __contains__(self, key: Any) -> bool:
        return self._op("contains", key).found

    @aio_method
    def contains(self, key: Any) -> bool:
        return self._op("contains", key).found

    @aio_method
    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        resp = self._op("pop", key)
        if resp.found:
            return deserialize(resp.value)
        if default is _MISSING:
            raise KeyError(key)
        return default

    def __delitem__(self, key: Any) -> None:
        self.pop(key)

    def __len__(self) -> int:
        return self._op("len").count

    @aio_method
    def len(self) -> int:
        return self._op("len").count

    def _items(self) -> list[tuple[Any, Any]]:
        resp = self._op("items")
        pairs = zip(resp.keys, resp.values, strict=True)
        return [(deserialize(k), deserialize(v)) for k, v in pairs]

    @functools.partial(aio_method, iterates=True)
    def keys(self) -> Iterator[Any]:
        return iter([deserialize(k) for k in self._op("keys").keys])

    @functools.partial(aio_method, iterates=True)
    def values(self) -> Iterator[Any]:
        return iter([v for _, v in self._items()])

    @functools.partial(aio_method, iterates=True)
    def items(self) -> Iterator[tuple[Any, Any]]:
        return iter(self._items())

    def __iter__(self) -> Iterator[Any]:
        return iter([deserialize(k) for k in self._op("keys").keys])

    @aio_method
    def clear(self) -> None:
        self._op("clear")


class Queue(_Object):
    """A named FIFO queue of the workspace; each item is handed out once.

    ``partition=`` (a string up to 64 characters) picks an independent sub-queue.
    ``Queue.ephemeral()`` makes one that lives for a ``with`` block. Handles pickle by name,
    so they can be passed into functions as arguments. Every method has ``.aio``.
    """

    kind = "queue"

    @classmethod
    def from_name(cls, name: str, *, create_if_missing: bool = False) -> Queue:
        return cls(name, create_if_missing)

    @classmethod
    @contextmanager
    def ephemeral(cls) -> Iterator[Queue]:
        """A new, empty Queue removed (with its items) when the block ends."""
        q = cls(_ephemeral_name("queue"), True)
        with _owned() as client_id:
            q._client_id = client_id
            if client_id:
                q._op("ensure")  # recorded as this client's, for the reaper
            try:
                yield q
            finally:
                try:
                    q._op("delete")
                finally:
                    q._ended = True

    def _op(self, op: str, values: list[Any] | None = None, n: int = 1,
            timeout: float | None = 0.0, partition: str | None = None,
            total: bool = False) -> wire.QueueResponse:
        self._alive()
        if partition is not None and not isinstance(partition, str):
            raise InvalidError(f"partition={partition!r} is not allowed: use a string")
        req = wire.QueueRequest(name=self.name, op=op,  # type: ignore[arg-type]
                                 values=[serialize(v) for v in values or []], n=n,
                                 timeout=timeout, create_if_missing=self.create_if_missing,
                                 partition=partition or "", total=total,
                                 client_id=self._client_id if op in ("ensure", "delete") else "")
        wait = None if timeout is None else timeout + 30.0
        return wire.queue_response_decoder.decode(_call("queue", req, wait))

    @aio_method
    def put(self, value: Any, block: bool = True, timeout: float | None = None, *,
            partition: str | None = None) -> None:
        self._op("put", [value], partition=partition)

    @aio_method
    def put_many(self, values: list[Any], block: bool = True, timeout: float | None = None, *,
                 partition: str | None = None) -> None:
        self._op("put", list(values), partition=partition)

    @aio_method
    def get(self, block: bool = True, timeout: float | None = None, *,
            partition: str | None = None) -> Any:
        """The next item, as Modal's: with ``block`` waits up to ``timeout`` seconds (None:
        until one comes) and raises ``queue.Empty`` when none came; without ``block``
        returns None at once when the queue is empty."""
        items = self.get_many(1, block=block, timeout=timeout, partition=partition)
        if not items:
            if not block:
                return None
            raise _queue.Empty(f"queue {self.name!r} had no item within {timeout:g} s")
        return items[0]

    @aio_method
    def get_many(self, n_values: int, block: bool = True, timeout: float | None = None, *,
                 partition: str | None = None) -> list[Any]:
        """Up to ``n_values`` items: waits (as ``get``) for the first, then takes what is
        there. Returns an empty list when none came in time (as Modal does)."""
        if isinstance(n_values, bool) or not isinstance(n_values, int) or n_values < 1:
            raise InvalidError(f"n_values={n_values!r} is not allowed: use an integer >= 1")
        first = min(n_values, _GET_CHUNK)
        if not block:
            got = self._op("get", n=first, timeout=0.0, partition=partition).values
        else:
            while True:
                got = self._op("get", n=first, timeout=timeout, partition=partition).values
                if got or timeout is not None:
                    break
        out = [deserialize(v) for v in got]
        while got and len(out) < n_values:  # the rest: only what is already there
            got = self._op("get", n=min(n_values - len(out), _GET_CHUNK), timeout=0.0,
                           partition=partition).values
            out.extend(deserialize(v) for v in got)
        return out

    @functools.partial(aio_method, iterates=True)
    def iterate(self, *, item_poll_timeout: float = 0.0, partition: str | None = None
                ) -> Iterator[Any]:
        """Each item in turn, until none has come for ``item_poll_timeout`` seconds."""
        while True:
            got = self.get_many(_GET_CHUNK, block=item_poll_timeout > 0,
                                timeout=max(item_poll_timeout, 0.0), partition=partition)
            if not got:
                return
            yield from got

    @aio_method
    def len(self, *, partition: str | None = None, total: bool = False) -> int:
        """Items waiting in ``partition`` (default: the default one), or with ``total``
        in every partition."""
        if total and partition is not None:
            raise InvalidError("Queue.len() takes partition= or total=True, not both")
        return self._op("len", partition=partition, total=total).count

    def __len__(self) -> int:
        return self._op("len").count

    @aio_method
    def clear(self, *, partition: str | None = None) -> None:
        self._op("clear", partition=partition)
