"""Volumes on this machine: a cache of file contents by sha256, and each container's
mounts materialised from it.

- :class:`VolumeCache` keeps whole files under ``<home>/volcache/<sha256>``, bounded by
  ``volume_cache_bytes`` (least recently used evicted). A miss fetches the file's chunks
  from the volume's object store (a few at once) and writes them in order to a temporary
  file, never holding the file in memory; a hit reads nothing from the store.
- :class:`ContainerVolumes` materialises the committed version each mount names into a
  plain directory of the container's own, which the runtime binds at the mount path: a
  read-only mount is hard links into the cache (the bind is read-only, so nothing writes
  through); a writable one is an overlayfs whose lower layer is such hard links and whose
  upper layer takes the container's writes (a file it changes is copied up first), so
  the container never writes into the cache and nothing is copied before it starts.
  Where overlayfs cannot be mounted (an agent not running as root), it is a copy.
  ``commit`` walks the directory and uploads only the files whose size or mtime changed
  since they were materialised (and whose content then differs); ``reload`` brings the
  directory to the newest version, leaving this container's uncommitted files alone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from burst import wire
from burst.exception import Error as BurstError
from burst.exception import InvalidError, NotFoundError
from burst.volume import MOUNTS_ENV, check_mount_path
from burst.wire import VolumeFile, VolumeMount
from burst_core import logs
from burst_core.volumes import CHUNK, PARALLEL, VolumeRecord, Volumes, chunks_of

log = logs.get("burst.agent.volumes")


class VolumeUnavailable(Exception):
    """A container's volume cannot be mounted (unknown, deleted, unreadable): it does not
    start, and its waiting callers get the reason."""


class VolumeCache:
    """File contents by sha256, bounded in bytes, least recently used evicted."""

    def __init__(self, root: Path, max_bytes: int, owner: int | None = None) -> None:
        self.root = root
        self.max_bytes = max_bytes
        #: uid (and gid) the cached files belong to: the containers' user, so that a
        #: writable mount's overlay lets it change them (by copying them up).
        self.owner = owner
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)  # only the agent reaches it (containers get links or copies)
        self._lru: collections.OrderedDict[str, int] = collections.OrderedDict()
        found = []
        for p in root.iterdir():
            if p.name.startswith("tmp-"):
                p.unlink(missing_ok=True)  # an interrupted fetch
            elif len(p.name) == 64:
                st = p.stat()
                found.append((st.st_atime, p.name, st.st_size))
        for _, sha, size in sorted(found):
            self._lru[sha] = size
        self._fetching: dict[str, asyncio.Future[Path]] = {}
        self.hits = 0
        self.misses = 0

    @property
    def size(self) -> int:
        return sum(self._lru.values())

    def path(self, sha: str) -> Path:
        return self.root / sha

    async def get(self, vols: Volumes, rec: VolumeRecord, f: VolumeFile) -> Path:
        """The cached file with ``f``'s content, fetched if need be."""
        if f.sha256 in self._lru and self.path(f.sha256).exists():
            self._lru.move_to_end(f.sha256)
            self.hits += 1
            return self.path(f.sha256)
        pending = self._fetching.get(f.sha256)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Path] = asyncio.get_running_loop().create_future()
        self._fetching[f.sha256] = fut
        try:
            self.misses += 1
            p = await self._fetch(vols, rec, f)
            self._lru[f.sha256] = f.size
            self._evict(keep=f.sha256)
            fut.set_result(p)
            return p
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as e:
            fut.set_exception(e)
            fut.exception()  # (retrieved: a lone fetch has no other waiter)
            raise
        finally:
            del self._fetching[f.sha256]

    async def _fetch(self, vols: Volumes, rec: VolumeRecord, f: VolumeFile) -> Path:
        if wire.volume_file_id(chunks_of(f)) != f.sha256:
            raise InvalidError(f"volume {rec.name!r}: a file's id does not match its chunks")
        tmp = self.root / f"tmp-{f.sha256[:16]}-{os.getpid()}-{time.monotonic_ns()}"
        # The next few chunks are on their way while one is written.
        window: collections.deque[asyncio.Task[bytes]] = collections.deque()
        try:
            with tmp.open("wb") as out:
                chunks = iter(chunks_of(f))
                for sha in chunks:
                    window.append(asyncio.create_task(vols.get_chunk(rec, sha)))
                    if len(window) >= PARALLEL:
                        break
                while window:
                    data = await window.popleft()
                    nxt = next(chunks, None)
                    if nxt is not None:
                        window.append(asyncio.create_task(vols.get_chunk(rec, nxt)))
                    await asyncio.to_thread(out.write, data)  # (get_chunk checked it)
            os.chmod(tmp, 0o644)
            if self.owner is not None:
                os.chown(tmp, self.owner, self.owner)
            os.replace(tmp, self.path(f.sha256))
        except BaseException:
            for t in window:
                t.cancel()
            tmp.unlink(missing_ok=True)
            raise
        return self.path(f.sha256)

    def _evict(self, keep: str) -> None:
        total = self.size
        while total > self.max_bytes and len(self._lru) > 1:
            sha, size = next(iter(self._lru.items()))
            if sha == keep:
                self._lru.move_to_end(sha)
                continue
            del self._lru[sha]
            # A read-only mount's hard link keeps its data until the container is gone.
            self.path(sha).unlink(missing_ok=True)
            total -= size


@dataclass
class Mount:
    spec: VolumeMount
    host_dir: Path
    #: A writable mount's overlay layers (None: a read-only mount, or a copy).
    lower: Path | None = None
    #: The version materialised (or last committed or reloaded) and each file's stamp
    #: (size, mtime_ns) when it was written there: what ``commit`` compares against.
    files: dict[str, VolumeFile] = field(default_factory=dict)
    stamps: dict[str, tuple[int, int]] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _stamp(p: Path) -> tuple[int, int]:
    st = p.lstat()
    return st.st_size, st.st_mtime_ns


class ContainerVolumes:
    """One container's volume mounts (see the module docstring)."""

    def __init__(self, vols: Volumes, cache: VolumeCache, workspace: str, root: Path,
                 specs: list[VolumeMount], owner: int | None) -> None:
        self.vols = vols
        self.cache = cache
        self.workspace = workspace
        self.root = root
        self.owner = owner  # uid (and gid) a writable mount's files get; None: the agent's
        self.mounts = [Mount(s, root / str(i)) for i, s in enumerate(specs)]
        #: Seconds the last materialisation took (the volume benchmark's row).
        self.materialise_s = 0.0

    def env(self) -> dict[str, str]:
        """What the container is told: where each volume is mounted (for ``commit`` and
        ``reload``), and how long materialising took (bench/volume.py reads it)."""
        return {MOUNTS_ENV: json.dumps({m.spec.path: m.spec.name for m in self.mounts}),
                "BURST_VOLUME_MATERIALISE_S": f"{self.materialise_s:.6f}"}

    def binds(self) -> list[tuple[Path, str, bool]]:
        return [(m.host_dir, m.spec.path, m.spec.read_only) for m in self.mounts]

    async def prepare(self) -> None:
        """Materialise every mount's committed version (before the container starts)."""
        t0 = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        for m in self.mounts:
            check_mount_path(m.spec.path, f"volume {m.spec.name!r}")
            m.host_dir.mkdir()
            if not m.spec.read_only:
                self._own(m.host_dir)
            try:
                rec = await self._fetch_all(m.spec.name)
                if not m.spec.read_only and os.geteuid() == 0:
                    await self._overlay(m, rec)
                else:
                    await self._write(m, rec, dict(rec.files))
            except BurstError as e:
                raise VolumeUnavailable(f"volume {m.spec.name!r} at {m.spec.path}: {e}") from None
            m.files = dict(rec.files)
        self.materialise_s = time.monotonic() - t0

    async def _fetch_all(self, name: str, attempts: int = 3) -> VolumeRecord:
        """The newest version of volume ``name``, all of its files in the cache (a few
        fetched at once). A chunk deleted meanwhile (a commit replaced its file) means a
        newer version: it is read again."""
        sem = asyncio.Semaphore(PARALLEL)

        async def one(rec: VolumeRecord, f: VolumeFile) -> None:
            async with sem:
                await self.cache.get(self.vols, rec, f)

        for attempt in range(attempts):
            rec, _ = await self.vols.record(self.workspace, name)
            try:
                await asyncio.gather(*(one(rec, f) for f in rec.files.values()))
                return rec
            except NotFoundError:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    async def _overlay(self, m: Mount, rec: VolumeRecord) -> None:
        """A writable mount as an overlayfs over hard links into the cache (a copy where
        overlayfs cannot be mounted)."""
        base = m.host_dir.with_name(m.host_dir.name + ".layers")
        lower, upper, work = base / "lower", base / "upper", base / "work"
        for d in (base, lower, upper, work):
            d.mkdir()
        self._own(lower)
        self._own(upper)
        m.lower = lower
        await self._write(m, rec, dict(rec.files), into=lower, link=True)
        opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
        proc = await asyncio.create_subprocess_exec(
            "mount", "-t", "overlay", "overlay", "-o", opts, str(m.host_dir),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        if proc.returncode != 0:
            log.warning("volume_overlay_failed", error=err.decode(errors="replace").strip())
            m.lower = None
            await asyncio.to_thread(shutil.rmtree, base, True)
            m.stamps.clear()
            await self._write(m, rec, dict(rec.files))
            return
        # What commit compares against: the files as the merged view shows them.
        for rel in rec.files:
            m.stamps[rel] = _stamp(m.host_dir / rel)

    def _own(self, p: Path) -> None:
        if self.owner is not None:
            os.chown(p, self.owner, self.owner)

    def _dirs(self, m: Mount, rel: str, into: Path | None = None) -> Path:
        """The directories down to ``rel`` in the mount (made, owned like the mount)."""
        target = (into or m.host_dir) / rel
        missing = []
        d = target.parent
        while not d.exists():
            missing.append(d)
            d = d.parent
        for d in reversed(missing):
            d.mkdir()
            if not m.spec.read_only:
                self._own(d)
        return target

    async def _write(self, m: Mount, rec: VolumeRecord, files: dict[str, VolumeFile],
                     into: Path | None = None, link: bool = False) -> None:
        """Put ``files`` into the mount's directory (or its overlay's lower layer,
        ``into``) from the cache: hard links for a read-only mount or a lower layer,
        copies (each replacing its path at once) for a writable directory."""
        for rel, f in sorted(files.items()):
            src = await self.cache.get(self.vols, rec, f)
            dst = self._dirs(m, rel, into)
            if dst.is_dir() and not dst.is_symlink():
                await asyncio.to_thread(shutil.rmtree, dst)
            if m.spec.read_only or link:
                with contextlib.suppress(FileNotFoundError):
                    dst.unlink()
                os.link(src, dst)
            else:
                tmp = dst.with_name(f".burst-tmp-{dst.name}")
                await asyncio.to_thread(shutil.copyfile, src, tmp)
                os.chmod(tmp, f.mode or 0o644)
                self._own(tmp)
                if f.mtime:
                    os.utime(tmp, (f.mtime, f.mtime))
                os.replace(tmp, dst)
            m.stamps[rel] = _stamp(dst)

    def _mounts_of(self, name: str, what: str) -> list[Mount]:
        found = [m for m in self.mounts if m.spec.name == name]
        if not found:
            raise InvalidError(f"volume {name!r} is not mounted in this container")
        if what == "commit":
            found = [m for m in found if not m.spec.read_only]
            if not found:
                raise InvalidError(f"volume {name!r} is mounted read-only here: nothing to "
                                   "commit")
        return found

    async def commit(self, name: str) -> int:
        """Upload what changed in the container's mounts of ``name``; the new version."""
        version = 0
        for m in self._mounts_of(name, "commit"):
            async with m.lock:
                version = await self._commit(m)
        return version

    async def _commit(self, m: Mount) -> int:
        rec, version = await self.vols.record(self.workspace, m.spec.name)
        seen: set[str] = set()
        changes: dict[str, VolumeFile | None] = {}
        for dirpath, dirnames, filenames in os.walk(m.host_dir):
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
            for fn in filenames:
                p = Path(dirpath) / fn
                if fn.startswith(".burst-tmp-") or not p.is_file() or p.is_symlink():
                    continue
                rel = p.relative_to(m.host_dir).as_posix()
                seen.add(rel)
                stamp = _stamp(p)
                if rel in m.files and m.stamps.get(rel) == stamp:
                    continue
                up = await self._upload(rec, p)
                if rel in m.files and m.files[rel].sha256 == up.sha256:
                    m.stamps[rel] = stamp  # touched, not changed
                    continue
                changes[rel] = up
                m.stamps[rel] = stamp
        for rel in m.files:
            if rel not in seen:
                changes[rel] = None
        if not changes:
            return version
        rec, version = await self.vols.commit(self.workspace, m.spec.name, changes)
        for rel, f in changes.items():
            if f is None:
                m.files.pop(rel, None)
                m.stamps.pop(rel, None)
            else:
                m.files[rel] = f
        log.info("volume_committed", volume=m.spec.name, files=len(changes), version=version)
        return version

    async def _upload(self, rec: VolumeRecord, p: Path) -> VolumeFile:
        """Store a file's chunks (a few in flight at once, one piece read at a time)."""
        chunks: list[str] = []
        sem = asyncio.Semaphore(PARALLEL)
        tasks: list[asyncio.Task[str]] = []

        async def put(data: bytes, sha: str) -> str:
            try:
                return await self.vols.put_chunk(rec, data, sha)
            finally:
                sem.release()

        def read(fp: BinaryIO) -> tuple[bytes, str]:
            """The next piece and its hash (in a thread: hashing lets go of the GIL)."""
            data = fp.read(CHUNK)
            return data, hashlib.sha256(data).hexdigest()

        st = p.stat()
        try:
            with p.open("rb") as fp:
                while True:
                    await sem.acquire()
                    data, sha = await asyncio.to_thread(read, fp)
                    if not data and tasks:
                        sem.release()
                        break
                    tasks.append(asyncio.create_task(put(data, sha)))
                    if not data:
                        break
            chunks = list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:
                t.cancel()
            raise
        return VolumeFile(size=st.st_size, sha256=wire.volume_file_id(chunks), chunks=chunks,
                          mtime=st.st_mtime, mode=st.st_mode & 0o777)

    async def reload(self, name: str) -> int:
        """Bring the container's mounts of ``name`` to the newest committed version."""
        version = 0
        for m in self._mounts_of(name, "reload"):
            async with m.lock:
                rec, version = await self.vols.record(self.workspace, m.spec.name)
                newer = {p: f for p, f in rec.files.items()
                         if p not in m.files or m.files[p].sha256 != f.sha256}
                gone = [p for p in m.files if p not in rec.files]
                for rel in gone:
                    p = m.host_dir / rel
                    # Only what this container has not changed since (its own work stays).
                    if p.is_file() and m.stamps.get(rel) == _stamp(p):
                        p.unlink()
                    m.stamps.pop(rel, None)
                await self._write(m, rec, newer)
                m.files = dict(rec.files)
        return version

    async def close(self, commit: bool) -> None:
        """At the container's end: commit its writable mounts (a clean exit), then
        remove the materialised directories."""
        try:
            if commit:
                for m in self.mounts:
                    if not m.spec.read_only and m.host_dir.exists():
                        async with m.lock:
                            try:
                                await self._commit(m)
                            except Exception as e:
                                log.warning("volume_commit_on_exit_failed",
                                            volume=m.spec.name, error=repr(e))
        finally:
            for m in self.mounts:
                if m.lower is not None:
                    proc = await asyncio.create_subprocess_exec(
                        "umount", "-l", str(m.host_dir), stdout=asyncio.subprocess.DEVNULL,
                        stderr=asyncio.subprocess.DEVNULL)
                    await proc.wait()
            await asyncio.to_thread(shutil.rmtree, self.root, True)
