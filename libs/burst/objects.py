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

import queue as _queue
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgspec

from burst import _context
from burst import _protocol as proto
from burst._serialization import deserialize, serialize
from burst.exception import InvalidError

if TYPE_CHECKING:
    from burst.client import Client

_MISSING = object()


def _call(kind: str, req: msgspec.Struct, timeout: float | None = None) -> bytes:
    body = proto.encode(req)
    if _context.platform is not None:
        return _context.platform.request(kind, body, timeout)
    client = _client()
    _, data = client.request("POST", f"/v1/{kind}s", body, proto.MSGPACK)
    return data


_clients: list[Client] = []


def _client() -> Client:
    if not _clients:
        from burst.client import Client

        _clients.append(Client.from_profile())
    return _clients[0]


def _check(kind: str, name: str) -> str:
    try:
        return proto.check_ident(kind, name)
    except ValueError as e:
        raise InvalidError(str(e)) from None


class Dict:
    """A named key-value store of the workspace (keys and values: anything picklable)."""

    def __init__(self, name: str, create_if_missing: bool) -> None:
        self.name = _check("dict", name)
        self.create_if_missing = create_if_missing

    @classmethod
    def from_name(cls, name: str, *, create_if_missing: bool = False) -> Dict:
        return cls(name, create_if_missing)

    def __repr__(self) -> str:
        return f"<burst.Dict {self.name}>"

    def _op(self, op: str, key: Any = _MISSING, value: Any = _MISSING) -> proto.DictResponse:
        req = proto.DictRequest(name=self.name, op=op,  # type: ignore[arg-type]
                                key=b"" if key is _MISSING else serialize(key),
                                value=b"" if value is _MISSING else serialize(value),
                                create_if_missing=self.create_if_missing)
        return proto.dict_response_decoder.decode(_call("dict", req))

    def __setitem__(self, key: Any, value: Any) -> None:
        self._op("put", key, value)

    def put(self, key: Any, value: Any) -> None:
        self._op("put", key, value)

    def update(self, other: dict[Any, Any] | None = None, **kwargs: Any) -> None:
        for k, v in {**(other or {}), **kwargs}.items():
            self._op("put", k, v)

    def __getitem__(self, key: Any) -> Any:
        resp = self._op("get", key)
        if not resp.found:
            raise KeyError(key)
        return deserialize(resp.value)

    def get(self, key: Any, default: Any = None) -> Any:
        resp = self._op("get", key)
        return deserialize(resp.value) if resp.found else default

    def __contains__(self, key: Any) -> bool:
        return self._op("contains", key).found

    def contains(self, key: Any) -> bool:
        return self._op("contains", key).found

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

    def len(self) -> int:
        return self._op("len").count

    def keys(self) -> Iterator[Any]:
        return iter([deserialize(k) for k in self._op("keys").keys])

    def clear(self) -> None:
        self._op("clear")


class Queue:
    """A named FIFO queue of the workspace; each item is handed out once."""

    def __init__(self, name: str, create_if_missing: bool) -> None:
        self.name = _check("queue", name)
        self.create_if_missing = create_if_missing

    @classmethod
    def from_name(cls, name: str, *, create_if_missing: bool = False) -> Queue:
        return cls(name, create_if_missing)

    def __repr__(self) -> str:
        return f"<burst.Queue {self.name}>"

    def _op(self, op: str, values: list[Any] | None = None, n: int = 1,
            timeout: float | None = 0.0) -> proto.QueueResponse:
        req = proto.QueueRequest(name=self.name, op=op,  # type: ignore[arg-type]
                                 values=[serialize(v) for v in values or []], n=n,
                                 timeout=timeout, create_if_missing=self.create_if_missing)
        wait = None if timeout is None else timeout + 30.0
        return proto.queue_response_decoder.decode(_call("queue", req, wait))

    def put(self, value: Any) -> None:
        self._op("put", [value])

    def put_many(self, values: list[Any]) -> None:
        self._op("put", list(values))

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """The next item; waits up to ``timeout`` seconds (None: up to 60 s per request,
        again until one comes) when ``block``. Raises ``queue.Empty`` when none came."""
        items = self.get_many(1, block=block, timeout=timeout)
        if not items:
            raise _queue.Empty(f"queue {self.name!r} is empty")
        return items[0]

    def get_many(self, n: int, block: bool = True, timeout: float | None = None) -> list[Any]:
        if not block:
            return [deserialize(v) for v in self._op("get", n=n, timeout=0.0).values]
        while True:
            resp = self._op("get", n=n, timeout=timeout)
            if resp.values or timeout is not None:
                return [deserialize(v) for v in resp.values]

    def len(self) -> int:
        return self._op("len").count

    def __len__(self) -> int:
        return self.len()

    def clear(self) -> None:
        self._op("clear")
