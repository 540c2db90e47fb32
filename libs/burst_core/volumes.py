"""burst.Volume's storage, shared by the gateway (clients) and the agent (containers).

- A volume's tree is one KV entry (``KV_VOLUMES``, key ``<ws>.<name>``): a
  :class:`VolumeRecord` mapping each file's path to a :class:`burst.wire.VolumeFile`
  (size, sha256, chunk hashes). Its KV revision is the volume's version; a commit is a
  compare-and-set on it, retried on a race, and merges per file: two commits of
  different files both land, of one file the last wins.
- File contents are content-addressed chunks (``CHUNK`` bytes, named by their sha256)
  in an object store of the volume's own (``names.volume_store``), replicated as the
  other streams are; deleting the volume deletes that stream, which frees its space.
- A file is uploaded chunk by chunk (never whole in memory) before the commit that names
  it: an interrupted upload leaves only unreferenced chunks, and the previous version
  stays readable. A commit checks that every chunk it names is stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import posixpath
import secrets
import time

import msgspec
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import ObjectMeta, ObjectMetaOptions, ObjectStoreConfig
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from burst import wire
from burst.exception import ConflictError, InvalidError, NotFoundError, ResourceExhaustedError
from burst.wire import VolumeFile, VolumeRequest, VolumeResponse
from burst_core import bus, logs, names
from burst_core.schemas import ClientObject, encode

log = logs.get("burst.volumes")

#: Bytes per chunk: a request body, a relayed frame and a cache read each hold one.
CHUNK = 4 << 20
#: Chunks moved at once by one upload or download.
PARALLEL = 4
#: Bytes per object-store message of a chunk (nats-py's default is 128 KiB; fewer,
#: larger messages move a chunk in fewer round trips, well under NATS's 1 MiB payload).
MESSAGE = 512 << 10
#: Most paths one listing returns.
MAX_LIST = 100_000


class VolumeRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    v: int = 1
    volume_id: str
    workspace: str
    name: str
    created_at: float
    updated_at: float
    files: dict[str, VolumeFile] = msgspec.field(default_factory=dict)
    #: Chunks no file holds any more, by when they were let go: deleted by a commit made
    #: ``chunk_grace`` seconds later (readers of an older version and uploads that found
    #: them stored have that long), kept if a file holds them again meanwhile.
    garbage: dict[str, float] = msgspec.field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files.values())


_record_decoder = msgspec.msgpack.Decoder(VolumeRecord)


def check_name(name: str) -> str:
    try:
        return wire.check_ident("volume", name)
    except ValueError as e:
        raise InvalidError(str(e)) from None


def check_path(path: str, *, allow_root: bool = True) -> str:
    """``path`` inside a volume, normalised (no leading '/'; "" is the root), or an error
    naming it when it escapes the volume (``../``) or holds a NUL."""
    if not isinstance(path, str) or "\0" in path:
        raise InvalidError(f"invalid volume path {wire.quote_value(path)}")
    norm = posixpath.normpath("/" + path.replace("\\", "/")).lstrip("/")
    raw = posixpath.normpath(path.lstrip("/")) if path.strip("/") else "."
    if raw == ".." or raw.startswith("../"):
        raise InvalidError(f"path {path!r} escapes the volume: use a path inside it "
                           "(no leading '../')")
    if norm in ("", "."):
        if not allow_root:
            raise InvalidError(f"path {path!r} names the volume's root: name a file")
        return ""
    return norm


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunks_of(f: VolumeFile) -> list[str]:
    """A file's chunk hashes (a file of one chunk lists none in the tree: its own)."""
    return f.chunks or [f.sha256]


def collect(old: dict[str, VolumeFile], new: dict[str, VolumeFile],
            garbage: dict[str, float], now: float, grace: float
            ) -> tuple[dict[str, float], list[str]]:
    """The garbage after a commit from ``old`` to ``new`` files, and the chunks to delete
    now: let go more than ``grace`` seconds ago and held by no file."""
    held = {c for f in new.values() for c in chunks_of(f)}
    out = {c: t for c, t in garbage.items() if c not in held}
    for c in {c for f in old.values() for c in chunks_of(f)} - held:
        out.setdefault(c, now)
    doomed = sorted(c for c, t in out.items() if now - t >= grace)
    for c in doomed:
        del out[c]
    return out, doomed


def entries(files: dict[str, VolumeFile], path: str, recursive: bool) -> list[wire.VolumeEntry]:
    """The files and directories under ``path`` (a file: itself), as ``listdir`` gives
    them; directories are implied by the files below them."""
    if path in files:
        f = files[path]
        return [wire.VolumeEntry(path=path, type="file", size=f.size, mtime=f.mtime)]
    prefix = f"{path}/" if path else ""
    out: dict[str, wire.VolumeEntry] = {}
    for p, f in files.items():
        if not p.startswith(prefix):
            continue
        rest = p[len(prefix):].split("/")
        if recursive:
            for i in range(1, len(rest)):
                d = prefix + "/".join(rest[:i])
                out.setdefault(d, wire.VolumeEntry(path=d, type="directory"))
            out[p] = wire.VolumeEntry(path=p, type="file", size=f.size, mtime=f.mtime)
        elif len(rest) == 1:
            out[p] = wire.VolumeEntry(path=p, type="file", size=f.size, mtime=f.mtime)
        else:
            d = prefix + rest[0]
            out.setdefault(d, wire.VolumeEntry(path=d, type="directory"))
    if not out and path:
        raise NotFoundError(f"no file or directory {path!r} in the volume")
    return sorted(out.values(), key=lambda e: e.path)


def apply(files: dict[str, VolumeFile], changes: dict[str, VolumeFile | None]
          ) -> dict[str, VolumeFile]:
    """``files`` with ``changes`` applied: a file put at its path, None removing the
    path and everything below it."""
    out = dict(files)
    for path, f in changes.items():
        if f is None:
            out.pop(path, None)
            for p in [p for p in out if p.startswith(path + "/")] if path else list(out):
                del out[p]
            continue
        for p in [p for p in out if p.startswith(path + "/")]:
            del out[p]  # a directory replaced by a file
        parts = path.split("/")
        for i in range(1, len(parts)):
            out.pop("/".join(parts[:i]), None)  # a file replaced by a directory
        out[path] = f
    return out


class Volumes:
    """Volume operations in a workspace (the gateway's and the agent's)."""

    def __init__(self, js: JetStreamContext, max_bytes: int, chunk_grace: float = 600.0
                 ) -> None:
        self.js = js
        self.max_bytes = max_bytes
        self.chunk_grace = chunk_grace
        self._kv: KeyValue | None = None
        self._stores: dict[str, ObjectStore] = {}
        #: Chunk reads from the object store (the agent's cache counts its misses by it).
        self.chunk_reads = 0

    async def kv(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(names.KV_VOLUMES)
        return self._kv

    # ---- records -------------------------------------------------------------------
    async def record(self, workspace: str, name: str, create: bool = False
                     ) -> tuple[VolumeRecord, int]:
        """The volume's record and revision; made when ``create``, else NotFound."""
        check_name(name)
        kv = await self.kv()
        key = names.volume_key(workspace, name)
        while True:
            raw, rev = await bus.kv_get(kv, key)
            if raw is not None:
                return _record_decoder.decode(raw), rev
            if not create:
                raise NotFoundError(f"volume {name!r} not found in workspace {workspace!r} "
                                    "(create it with `burst volume create` or "
                                    "create_if_missing=True)")
            now = time.time()
            rec = VolumeRecord(volume_id=secrets.token_hex(8), workspace=workspace, name=name,
                               created_at=now, updated_at=now)
            await self._make_store(rec.volume_id)
            try:
                rev = await kv.create(key, msgspec.msgpack.encode(rec))
            except nats.js.errors.KeyWrongLastSequenceError:  # made meanwhile: use that one
                await self._drop_store(rec.volume_id)
                continue
            return rec, rev

    async def _replicas(self) -> int:
        info = await self.js.stream_info(f"KV_{names.KV_VOLUMES}")
        return info.config.num_replicas or 1

    async def _make_store(self, volume_id: str) -> None:
        store = names.volume_store(volume_id)
        self._stores[volume_id] = await self.js.create_object_store(
            store, config=ObjectStoreConfig(bucket=store, replicas=await self._replicas()))

    async def _drop_store(self, volume_id: str) -> None:
        self._stores.pop(volume_id, None)
        try:
            await self.js.delete_object_store(names.volume_store(volume_id))
        except nats.js.errors.NotFoundError:
            pass

    async def store(self, rec: VolumeRecord) -> ObjectStore:
        st = self._stores.get(rec.volume_id)
        if st is None:
            try:
                st = await self.js.object_store(names.volume_store(rec.volume_id))
            except nats.js.errors.BucketNotFoundError:
                raise NotFoundError(f"volume {rec.name!r} was deleted") from None
            self._stores[rec.volume_id] = st
        return st

    def info(self, rec: VolumeRecord, version: int) -> wire.VolumeInfo:
        return wire.VolumeInfo(name=rec.name, version=version, files=len(rec.files),
                               size=rec.size, created_at=rec.created_at,
                               updated_at=rec.updated_at)

    async def list_volumes(self, workspace: str) -> list[wire.VolumeInfo]:
        kv = await self.kv()
        out = []
        for key in await bus.kv_keys(kv, workspace):
            raw, rev = await bus.kv_get(kv, key)
            if raw is not None:
                rec = _record_decoder.decode(raw)
                if rec.workspace == workspace:
                    out.append(self.info(rec, rev))
        return sorted(out, key=lambda i: i.name)

    async def delete(self, workspace: str, name: str) -> None:
        rec, rev = await self.record(workspace, name)
        kv = await self.kv()
        try:
            await kv.delete(names.volume_key(workspace, name), last=rev)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise ConflictError(f"volume {name!r} changed while it was being deleted; "
                                "try again") from None
        await self._drop_store(rec.volume_id)

    # ---- chunks --------------------------------------------------------------------
    async def has_chunk(self, st: ObjectStore, sha: str) -> bool:
        try:
            await st.get_info(sha)
        except nats.js.errors.ObjectNotFoundError:
            return False
        return True

    async def put_chunk(self, rec: VolumeRecord, data: bytes, sha: str = "") -> str:
        """Store a chunk under its sha256 (``sha``: already computed by this process;
        never a caller's word for it); its hash."""
        if len(data) > CHUNK:
            raise InvalidError(f"chunk of {len(data)} bytes: at most {CHUNK}")
        # (hashlib lets go of the GIL on large data: off the event loop, in parallel)
        sha = sha or await asyncio.to_thread(sha256_hex, data)
        st = await self.store(rec)
        if not await self.has_chunk(st, sha):
            await st.put(sha, data, meta=ObjectMeta(
                name=sha, options=ObjectMetaOptions(max_chunk_size=MESSAGE)))
        return sha

    async def get_chunk(self, rec: VolumeRecord, sha: str) -> bytes:
        st = await self.store(rec)
        self.chunk_reads += 1
        try:
            info = await st.get_info(sha)
        except nats.js.errors.ObjectNotFoundError:
            raise NotFoundError(f"volume {rec.name!r}: chunk {sha[:16]} is missing") from None
        # Its messages one by one with direct gets (the next one on the chunk's subject):
        # an object store ``get`` sets up a consumer per object, far slower per chunk.
        store = names.volume_store(rec.volume_id)
        subject = f"$O.{store}.C.{info.nuid}"
        out = bytearray()
        seq = 0
        for _ in range(info.chunks or 0):
            try:
                msg = await self.js.get_msg(f"OBJ_{store}", seq=seq + 1, subject=subject,
                                            direct=True, next=True)
            except nats.js.errors.NotFoundError:
                raise NotFoundError(f"volume {rec.name!r}: chunk {sha[:16]} is "
                                    "missing") from None
            out += msg.data or b""
            seq = msg.seq or seq + 1
        data = bytes(out)
        if await asyncio.to_thread(sha256_hex, data) != sha:
            raise InvalidError(f"volume {rec.name!r}: chunk {sha[:16]} is corrupt")
        return data

    async def missing(self, rec: VolumeRecord, shas: list[str]) -> list[str]:
        st = await self.store(rec)
        have = await asyncio.gather(*(self.has_chunk(st, s) for s in shas))
        return [s for s, ok in zip(shas, have, strict=True) if not ok]

    # ---- commits -------------------------------------------------------------------
    async def commit(self, workspace: str, name: str, changes: dict[str, VolumeFile | None],
                     overwrite: bool = True) -> tuple[VolumeRecord, int]:
        """Apply ``changes`` to the newest version (compare-and-set, retried on a race):
        per file, so concurrent commits of different files both land."""
        norm: dict[str, VolumeFile | None] = {}
        for p, f in changes.items():
            path = check_path(p, allow_root=f is None)
            if f is not None:
                if f.size < 0 or len(f.sha256) != 64 or (
                        wire.volume_file_id(chunks_of(f)) != f.sha256):
                    raise InvalidError(f"file {path!r}: malformed entry (its id is not "
                                       "its chunks')")
                if f.chunks == [f.sha256]:  # one chunk: implied, so the tree holds more
                    f = msgspec.structs.replace(f, chunks=[])
            norm[path] = f
        rec, rev = await self.record(workspace, name)
        needed = sorted({c for f in norm.values() if f is not None for c in chunks_of(f)})
        lost = await self.missing(rec, needed) if needed else []
        if lost:
            raise InvalidError(f"volume {name!r}: {len(lost)} chunk(s) of this commit were "
                               "never uploaded (an interrupted upload?); upload them again")
        kv = await self.kv()
        while True:
            taken = [p for p, f in norm.items() if f is not None and p in rec.files]
            if taken and not overwrite:
                raise ConflictError(f"volume {name!r} already has {taken[0]!r}: upload with "
                                    "batch_upload(force=True) to replace it")
            files = apply(rec.files, norm)
            size = sum(f.size for f in files.values())
            if self.max_bytes and size > self.max_bytes:
                raise ResourceExhaustedError(
                    f"volume {name!r} would hold {size} bytes, above its limit of "
                    f"{self.max_bytes} bytes (BURST_VOLUME_MAX_BYTES)")
            garbage, doomed = collect(rec.files, files, rec.garbage, time.time(),
                                      self.chunk_grace)
            new = msgspec.structs.replace(rec, files=files, garbage=garbage,
                                          updated_at=time.time())
            data = msgspec.msgpack.encode(new)
            if len(data) > (900 << 10):
                raise ResourceExhaustedError(
                    f"volume {name!r} would list {len(files)} files, more than one volume's "
                    "tree holds; keep fewer, larger files (an archive)")
            try:
                rev = await kv.update(names.volume_key(workspace, name), data, last=rev)
            except nats.js.errors.KeyWrongLastSequenceError:
                rec, rev = await self.record(workspace, name)  # another commit won: merge
                continue
            await self._delete_chunks(new, doomed)
            return new, rev

    async def _delete_chunks(self, rec: VolumeRecord, doomed: list[str]) -> None:
        if not doomed:
            return
        st = await self.store(rec)
        for sha in doomed:
            try:
                await st.delete(sha)
            except nats.js.errors.ObjectNotFoundError:
                pass
            except Exception as e:  # noqa: BLE001 - space only: the commit stands
                log.warning("volume_chunk_delete_failed", volume=rec.name, error=repr(e))

    async def _own(self, workspace: str, client_id: str, name: str, owned: bool) -> None:
        """Tie an ephemeral volume to its client (the scheduler's reaper deletes it when
        the client's heartbeats stop), or untie it."""
        try:
            wire.check_client_id(client_id)
        except ValueError as e:
            raise InvalidError(str(e)) from None
        kv = await self.js.key_value(names.KV_CLIENTS)
        key = names.client_object_key(workspace, client_id, "volume", name)
        if owned:
            await kv.put(key, encode(ClientObject(workspace=workspace, client_id=client_id,
                                                  kind="volume", name=name,
                                                  created_at=time.time())))
        else:
            await kv.delete(key)

    # ---- one request ----------------------------------------------------------------
    async def op(self, workspace: str, req: VolumeRequest) -> VolumeResponse:
        """One operation from a client or a container, in ``workspace``."""
        if req.op == "list":
            return VolumeResponse(volumes=await self.list_volumes(workspace))
        if req.op == "create":
            check_name(req.name)
            kv = await self.kv()
            raw, _ = await bus.kv_get(kv, names.volume_key(workspace, req.name))
            if raw is not None:
                raise ConflictError(f"volume {req.name!r} already exists")
        if req.op == "delete":
            await self.delete(workspace, req.name)
            if req.client_id:
                await self._own(workspace, req.client_id, req.name, False)
            return VolumeResponse()
        rec, rev = await self.record(workspace, req.name,
                                     create=req.create_if_missing or req.op == "create")
        if req.op == "create" and req.client_id:
            await self._own(workspace, req.client_id, req.name, True)
        if req.op in ("ensure", "create", "info"):
            return VolumeResponse(version=rev, info=self.info(rec, rev))
        if req.op == "listdir":
            path = check_path(req.path)
            found = entries(rec.files, path, req.recursive)
            if len(found) > MAX_LIST:
                raise ResourceExhaustedError(f"{len(found)} paths: list at most {MAX_LIST}")
            return VolumeResponse(version=rev, entries=found)
        if req.op == "entry":
            path = check_path(req.path, allow_root=False)
            f = rec.files.get(path)
            if f is None:
                raise NotFoundError(f"no file {path!r} in volume {req.name!r}")
            return VolumeResponse(version=rev, file=msgspec.structs.replace(
                f, chunks=chunks_of(f)))
        if req.op == "chunk":
            if len(req.items) != 1:
                raise InvalidError("op chunk takes one chunk hash")
            return VolumeResponse(data=await self.get_chunk(rec, req.items[0]))
        if req.op == "missing":
            return VolumeResponse(items=await self.missing(rec, req.items))
        if req.op == "put_chunk":
            return VolumeResponse(items=[await self.put_chunk(rec, req.data)])
        if req.op == "commit":
            rec, rev = await self.commit(workspace, req.name, req.changes, req.allow_overwrite)
            return VolumeResponse(version=rev, info=self.info(rec, rev))
        if req.op == "remove":
            path = check_path(req.path)
            found = entries(rec.files, path, True)  # NotFound when nothing is there
            if path not in rec.files and found and not req.recursive:
                raise InvalidError(f"{path or '/'!r} is a directory: remove it with "
                                   "recursive=True")
            rec, rev = await self.commit(workspace, req.name, {path: None})
            return VolumeResponse(version=rev, info=self.info(rec, rev))
        if req.op == "copy":
            return await self._copy(workspace, rec, req)
        if req.op in ("mount_commit", "mount_reload"):
            raise InvalidError(f"volume {req.name!r}: commit() and reload() work inside a "
                               "container that mounts the volume")
        raise InvalidError(f"unknown volume operation {req.op!r}")

    async def _copy(self, workspace: str, rec: VolumeRecord, req: VolumeRequest
                    ) -> VolumeResponse:
        """``copy_files``: sources into ``path`` (a directory, or with one file source, a
        new file name), as ``cp``; no bytes move (the chunks are shared)."""
        dst = check_path(req.path)
        if not req.items:
            raise InvalidError("copy_files needs at least one source path")
        dst_is_dir = (dst == "" or any(p.startswith(dst + "/") for p in rec.files)
                      or len(req.items) > 1 or req.path.endswith("/"))
        changes: dict[str, VolumeFile | None] = {}
        for src_raw in req.items:
            src = check_path(src_raw)
            if src in rec.files:
                target = (posixpath.join(dst, posixpath.basename(src)) if dst_is_dir else dst)
                changes[target] = rec.files[src]
                continue
            below = {p: f for p, f in rec.files.items() if src == "" or p.startswith(src + "/")}
            if not below:
                raise NotFoundError(f"no file or directory {src_raw!r} in volume {rec.name!r}")
            base = posixpath.join(dst, posixpath.basename(src)) if dst_is_dir and src else dst
            for p, f in below.items():
                rel = p[len(src) + 1:] if src else p
                changes[posixpath.join(base, rel) if base else rel] = f
        rec, rev = await self.commit(workspace, rec.name, changes)
        return VolumeResponse(version=rev, info=self.info(rec, rev))
