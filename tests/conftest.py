from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.servers import Server, start_nats, start_redis


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[Server]:
    """A fresh nats-server with JetStream and an empty store, per test."""
    srv = start_nats(tmp_path / "nats")
    yield srv
    srv.stop()


@pytest.fixture
def nats_url(nats_server: Server) -> str:
    return nats_server.url


@pytest.fixture
def redis_server() -> Iterator[Server]:
    """A fresh redis-server, per test."""
    srv = start_redis()
    yield srv
    srv.stop()


@pytest.fixture
def redis_url(redis_server: Server) -> str:
    return redis_server.url


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[object]:
    """A JetStream context with Burst's topology created."""
    from burst_core import bus

    nc = await bus.connect(nats_url, "test")
    js = nc.jetstream()
    await bus.ensure_topology(js)
    yield js
    await nc.close()
