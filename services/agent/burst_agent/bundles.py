"""Source bundles fetched from the object store and unpacked once per agent."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import tarfile
from pathlib import Path

import nats.js.errors
from nats.js.object_store import ObjectStore

from burst_core import names


class BundleCache:
    def __init__(self, store: ObjectStore, root: Path) -> None:
        self.store = store
        self.root = root
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, workspace: str, bundle_hash: str) -> Path:
        """The directory holding the unpacked bundle; fetched on first use, from the
        deploying ``workspace``'s copy (bundles are scoped to their workspace; the gateway
        deploys only a bundle its workspace stored). Unpacked once per hash: the same bytes,
        mounted read-only into every container."""
        dest = self.root / bundle_hash
        if dest.is_dir():
            return dest
        lock = self._locks.setdefault(bundle_hash, asyncio.Lock())
        async with lock:
            if dest.is_dir():
                return dest
            try:
                res = await self.store.get(names.bundle_name(workspace, bundle_hash))
            except nats.js.errors.NotFoundError:
                # Deployed before bundles were scoped: stored under the bare hash.
                res = await self.store.get(bundle_hash)
            data = res.data or b""
            actual = hashlib.sha256(data).hexdigest()
            if actual != bundle_hash:
                raise RuntimeError(f"bundle {bundle_hash} is corrupt (hashes to {actual})")
            await asyncio.to_thread(_unpack, data, dest)
        return dest


def _unpack(data: bytes, dest: Path) -> None:
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(tmp, filter="data")
        else:  # Python before 3.11.4 (Debian bookworm's 3.11.2, as in the compose images)
            tar.extractall(tmp, members=_plain_members(tar, tmp))
    os.replace(tmp, dest)


def _plain_members(tar: tarfile.TarFile, root: Path) -> list[tarfile.TarInfo]:
    """What the ``data`` filter lets through, where tarfile has no filters: regular files
    and directories inside ``root`` only, no set-id bits; anything else refuses the whole
    bundle, naming the member."""
    base = root.resolve()
    out = []
    for m in tar.getmembers():
        target = (base / m.name).resolve()
        if not (m.isfile() or m.isdir()) or os.path.isabs(m.name) or (
                target != base and base not in target.parents):
            raise RuntimeError(f"bundle member {m.name!r} is not a plain file or directory "
                               "inside the bundle: refused")
        m.mode &= 0o755
        m.uid = m.gid = 0
        m.uname = m.gname = ""
        out.append(m)
    return out
