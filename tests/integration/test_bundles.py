"""The agent's bundle cache against a real nats-server: it reads the deploying
workspace's copy of a bundle, never another workspace's, and still finds a bundle stored
under the bare hash by a deployment made before bundles were scoped."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path
from typing import Any

import nats.js.errors
import pytest

from burst_agent.bundles import BundleCache
from burst_core import names

pytestmark = pytest.mark.integration


def _tar(name: str, text: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = text.encode()
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def test_bundles_are_read_with_the_deploying_workspace(js: Any, tmp_path: Path) -> None:
    store = await js.object_store(names.OBJ_BUNDLES)
    data = _tar("app_a.py", "X = 'team-a'\n")
    h = hashlib.sha256(data).hexdigest()
    await store.put(names.bundle_name("team-a", h), data)
    # Each agent its own cache directory: nothing unpacked by the first is reused.
    with pytest.raises(nats.js.errors.NotFoundError):
        await BundleCache(store, tmp_path / "b").get("team-b", h)
    assert not (tmp_path / "b" / h).exists()
    got = await BundleCache(store, tmp_path / "a").get("team-a", h)
    assert (got / "app_a.py").read_text() == "X = 'team-a'\n"
    # A deployment from before the scoping: its bundle under the bare hash.
    old = _tar("old_app.py", "X = 'old'\n")
    old_h = hashlib.sha256(old).hexdigest()
    await store.put(old_h, old)
    got = await BundleCache(store, tmp_path / "c").get("team-c", old_h)
    assert (got / "old_app.py").read_text() == "X = 'old'\n"
