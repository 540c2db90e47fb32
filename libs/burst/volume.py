"""``burst.Volume``: files that outlive containers, with Modal's names and consistency.

Example::

    import burst

    vol = burst.Volume.from_name("weights", create_if_missing=True)
    app = burst.App("demo")

    @app.function(volumes={"/data": vol})
    def train():
        with open("/data/model.bin", "wb") as f:
            f.write(b"...")
        vol.commit()            # now other containers see it (also on a clean exit)

    @app.function(volumes={"/data": vol.read_only()})
    def serve():
        vol.reload()            # the newest committed version
        return open("/data/model.bin", "rb").read()

A container sees the volume as of its start or its last ``reload()``; its writes reach
others after ``commit()`` (and when the container exits cleanly). Commits merge per file:
two containers committing different files both land; of one file, the last commit wins.
From a client (or from any container), ``read_file``, ``listdir``, ``iterdir``,
``remove_file``, ``copy_files`` and ``batch_upload()`` work on the committed version.
Files travel as chunks of at most 4 MiB, so a file of any size streams.
"""

from __future__ import annotations

import enum
import json
import os
import posixpath
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

from burst import _context, wire
from burst.exception import InvalidError

if TYPE_CHECKING:
    from burst.client import Client

#: Bytes per uploaded or downloaded piece (the gateway's ``burst_core.volumes.CHUNK``).
CHUNK = 4 << 20
#: Paths a volume may not be mounted on (they would hide the container's own system).
SYSTEM_PATHS = ("/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32",
                "/proc", "/root", "/run", "/sbin", "/sys", "/tmp", "/usr", "/var",
                "/__burst")
#: Where the agent tells a container which volume is mounted where (JSON path -> name).
MOUNTS_ENV = "BURST_VOLUME_MOUNTS"
#: Chunks uploaded at once by one ``batch_upload``.
_PARALLEL = 4
#: Longest a container's commit or reload (which move whole files) is waited for.
_MOUNT_OP_TIMEOUT = 3600.0


class FileEntryType(enum.IntEnum):
    UNSPECIFIED = 0
    FILE = 1
    DIRECTORY = 2


@dataclass(frozen=True)
class FileEntry:
    """A listed path of a volume (Modal's ``FileEntry``)."""

    path: str
    type: FileEntryType
    mtime: int
    size: int


def check_mount_path(path: object, where: str = "volumes=") -> str:
    """``path`` if a volume may be mounted there: absolute, normalised, and not a system
    directory (``/``, ``/usr``, ``/proc``, ``/etc``...) or one above it."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidError(f"{where}: mount path {wire.quote_value(path)} is not an absolute "
                           "path: use one like '/data'")
    norm = posixpath.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if norm != path.rstrip("/") and path != "/":
        raise InvalidError(f"{where}: mount path {path!r} is not normalised: use {norm!r}")
    for sys_path in SYSTEM_PATHS:
        if norm == sys_path or (sys_path != "/" and norm.startswith(sys_path + "/")) or (
                sys_path.startswith(norm + "/")):
            raise InvalidError(f"{where}: mount path {path!r} would shadow the system path "
                               f"{sys_path!r}: mount volumes elsewhere, such as '/data' or "
                               "'/mnt/NAME'")
    return norm


def coerce_mounts(where: str, volumes: object) -> dict[str, Volume]:
    """``volumes=`` as {mount path: Volume}, or an error naming what is wrong."""
    if volumes is None:
        return {}
    if not isinstance(volumes, dict):
        raise InvalidError(f"{where}: volumes= takes a dict of mount path to burst.Volume, "
                           f"got {type(volumes).__name__}")
    out: dict[str, Volume] = {}
    for path, vol in volumes.items():
        if not isinstance(vol, Volume):
            raise InvalidError(f"{where}: volumes[{path!r}] is {vol!r}, not a burst.Volume")
        p = check_mount_path(path, where)
        for other in out:
            if other == p or other.startswith(p + "/") or p.startswith(other + "/"):
                raise InvalidError(f"{where}: mount paths {other!r} and {path!r} overlap")
        out[p] = vol
    return out


#: (Names for annotations inside ``Volume``, whose ``list`` hides the builtin there.)
FileEntries = list[FileEntry]
Paths = list[str]
VolumeInfos = list[wire.VolumeInfo]

_clients: list[Client] = []


def _client() -> Client:
    if not _clients:
        from burst.client import Client

        _clients.append(Client.from_profile())
    return _clients[0]


def _request(req: wire.VolumeRequest, timeout: float | None = None) -> wire.VolumeResponse:
    body = wire.encode(req)
    if _context.platform is not None:
        data = _context.platform.request("volume", body, timeout)
    else:
        _, data = _client().request("POST", "/v1/volumes", body, wire.MSGPACK)
    return wire.volume_response_decoder.decode(data)


def _mounts() -> dict[str, str]:
    """In a container: mount path -> volume name."""
    raw = os.environ.get(MOUNTS_ENV, "")
    return json.loads(raw) if raw else {}


def _open_files_under(paths: list[str]) -> list[str]:
    """Files this process holds open below ``paths`` (its ``/proc/self/fd``)."""
    found = []
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return []
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if any(target.startswith(p + "/") for p in paths):
            found.append(target)
    return sorted(set(found))


class Volume:
    """A named volume of the workspace (see the module docstring). Lazy: ``from_name``
    makes no network call; it is created (with ``create_if_missing``) on first use, or
    when a function that mounts it is deployed."""

    def __init__(self, name: str, create_if_missing: bool = False,
                 read_only: bool = False) -> None:
        try:
            self.name = wire.check_ident("volume", name)
        except ValueError as e:
            raise InvalidError(str(e)) from None
        self.create_if_missing = create_if_missing
        self._read_only = read_only
        self._ended = False

    def __repr__(self) -> str:
        return f"<burst.Volume {self.name}{' (read-only)' if self._read_only else ''}>"

    def __reduce__(self) -> Any:
        return (Volume, (self.name, self.create_if_missing, self._read_only))

    @property
    def object_id(self) -> str:
        return f"vo-{self.name}"

    @classmethod
    def from_name(cls, name: str, *, create_if_missing: bool = False,
                  environment_name: str | None = None, version: int | None = None) -> Volume:
        if environment_name is not None:
            raise InvalidError("Volume.from_name(environment_name=): Burst has no "
                               "environments; leave it out")
        return cls(name, create_if_missing)

    @classmethod
    @contextmanager
    def ephemeral(cls) -> Iterator[Volume]:
        """A new, empty volume deleted (with its files) when the block ends."""
        from burst.objects import _owned

        vol = cls(f"eph-volume-{secrets.token_hex(8)}", True)
        with _owned() as client_id:  # (a client's: deleted if the client dies first)
            vol._op("create", client_id=client_id)
            vol.create_if_missing = False
            try:
                yield vol
            finally:
                try:
                    vol._op("delete", client_id=client_id)
                finally:
                    vol._ended = True

    @staticmethod
    def create(name: str) -> None:
        """Create volume ``name`` (an error if it exists), as ``burst volume create``."""
        Volume(name)._op("create")

    @staticmethod
    def delete(name: str) -> None:
        """Delete volume ``name`` and its files, freeing their space."""
        Volume(name)._op("delete")

    @staticmethod
    def list() -> VolumeInfos:
        """The workspace's volumes (name, version, files, size, times)."""
        return _request(wire.VolumeRequest(op="list")).volumes

    def read_only(self) -> Volume:
        """This volume, mounted read-only (writes in the container fail)."""
        return Volume(self.name, self.create_if_missing, True)

    def _op(self, op: str, timeout: float | None = None, **kw: Any) -> wire.VolumeResponse:
        if self._ended:
            raise InvalidError(f"volume {self.name!r} was ephemeral and was deleted when its "
                               "`with burst.Volume.ephemeral()` block ended")
        return _request(wire.VolumeRequest(op=op, name=self.name,  # type: ignore[arg-type]
                                           create_if_missing=self.create_if_missing, **kw),
                        timeout)

    def info(self) -> wire.VolumeInfo:
        resp = self._op("info")
        assert resp.info is not None
        return resp.info

    # ---- in a container -------------------------------------------------------------
    def _mount_paths(self, what: str) -> Paths:
        if _context.platform is None:
            raise InvalidError(f"Volume.{what}() works inside a container that mounts volume "
                               f"{self.name!r}; from a client, files are committed as they "
                               "are uploaded")
        paths = [p for p, n in _mounts().items() if n == self.name]
        if not paths:
            raise InvalidError(f"Volume.{what}(): volume {self.name!r} is not mounted in this "
                               "container (add it to the function's volumes=)")
        return paths

    def commit(self) -> None:
        """Make this container's changes to the volume visible to others."""
        self._mount_paths("commit")
        self._op("mount_commit", timeout=_MOUNT_OP_TIMEOUT)

    def reload(self) -> None:
        """See the newest committed version (this container's uncommitted changes to
        other files stay). Raises RuntimeError while files under the mount are open."""
        paths = self._mount_paths("reload")
        held = _open_files_under(paths)
        if held:
            raise RuntimeError("there are open files preventing the operation: "
                               + ", ".join(held[:5]))
        self._op("mount_reload", timeout=_MOUNT_OP_TIMEOUT)

    # ---- files ----------------------------------------------------------------------
    def listdir(self, path: str = "/", *, recursive: bool = False) -> FileEntries:
        """The files and directories at ``path`` (everything below it with ``recursive``)."""
        resp = self._op("listdir", path=path, recursive=recursive)
        return [FileEntry(path=e.path, mtime=int(e.mtime), size=e.size,
                          type=FileEntryType.FILE if e.type == "file"
                          else FileEntryType.DIRECTORY) for e in resp.entries]

    def iterdir(self, path: str = "/", *, recursive: bool = True) -> Iterator[FileEntry]:
        yield from self.listdir(path, recursive=recursive)

    def _chunks(self, path: str) -> tuple[wire.VolumeFile, Iterator[bytes]]:
        resp = self._op("entry", path=path)
        assert resp.file is not None
        f = resp.file

        def pieces() -> Iterator[bytes]:
            for sha in f.chunks or [f.sha256]:
                yield self._op("chunk", items=[sha]).data

        return f, pieces()

    def read_file(self, path: str) -> Iterator[bytes]:
        """The file's bytes, in pieces of at most 4 MiB."""
        _, pieces = self._chunks(path)
        yield from pieces

    def read_file_into_fileobj(self, path: str, fileobj: IO[bytes]) -> int:
        """Write the file into ``fileobj``; returns its size."""
        n = 0
        for piece in self.read_file(path):
            fileobj.write(piece)
            n += len(piece)
        return n

    def remove_file(self, path: str, recursive: bool = False) -> None:
        """Remove a file (a directory with ``recursive=True``)."""
        self._op("remove", path=path, recursive=recursive)

    def copy_files(self, src_paths: Paths, dst_path: str, recursive: bool = False) -> None:
        """Copy files (and, as Modal, directories) within the volume, into ``dst_path``."""
        if isinstance(src_paths, str):
            raise InvalidError("copy_files() takes a list of source paths, got a str")
        self._op("copy", items=list(src_paths), path=dst_path, recursive=recursive)

    def batch_upload(self, force: bool = False) -> VolumeUpload:
        """Upload files in one commit: ``with vol.batch_upload() as b: b.put_file(...)``.
        Without ``force`` an existing file is an error instead of being replaced."""
        return VolumeUpload(self, force)

    def _upload(self, fp: IO[bytes], progress: Any = None) -> wire.VolumeFile:
        """Store a file's chunks (one piece in memory at a time); its entry."""
        from concurrent.futures import Future, ThreadPoolExecutor

        size = 0
        pending: list[Future[str]] = []

        def put(piece: bytes) -> str:
            sha = self._op("put_chunk", data=piece).items[0]
            if progress is not None:
                progress(len(piece))
            return sha

        # A few chunks in flight at once (each request on a connection of its thread),
        # at most twice as many read ahead: memory stays a few chunks whatever the size.
        with ThreadPoolExecutor(_PARALLEL) as pool:
            while True:
                while sum(not f.done() for f in pending) >= 2 * _PARALLEL:
                    next(f for f in pending if not f.done()).result()
                piece = fp.read(CHUNK)
                if not piece and pending:
                    break
                size += len(piece)
                pending.append(pool.submit(put, piece))
                if not piece:  # empty: one empty chunk
                    break
            chunks = [f.result() for f in pending]
        return wire.VolumeFile(size=size, sha256=wire.volume_file_id(chunks), chunks=chunks)


class VolumeUpload:
    """Files uploaded by ``Volume.batch_upload()``, committed together when the block
    ends without an error (an error leaves the volume as it was)."""

    def __init__(self, volume: Volume, force: bool) -> None:
        self.volume = volume
        self.force = force
        self._planned: list[tuple[Path | IO[bytes], str, int | None]] = []
        #: Called with each uploaded piece's size (the CLI's progress bar).
        self.progress: Any = None

    def __enter__(self) -> VolumeUpload:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.commit()

    def put_file(self, local_file: str | os.PathLike[str] | IO[bytes], remote_path: str,
                 mode: int | None = None) -> None:
        """Upload a local file (a path or a binary file object) to ``remote_path``."""
        src: Path | IO[bytes] = (Path(local_file) if isinstance(local_file, str | os.PathLike)
                                 else local_file)
        if isinstance(src, Path) and not src.is_file():
            raise FileNotFoundError(f"no local file {str(src)!r}")
        if remote_path.endswith("/") and isinstance(src, Path):
            remote_path += src.name
        self._planned.append((src, remote_path, mode))

    def put_directory(self, local_path: str | os.PathLike[str], remote_path: str,
                      recursive: bool = True) -> None:
        """Upload the files of a local directory below ``remote_path``."""
        root = Path(local_path)
        if not root.is_dir():
            raise FileNotFoundError(f"no local directory {str(root)!r}")
        files = root.rglob("*") if recursive else root.iterdir()
        for f in sorted(files):
            if f.is_file():
                rel = f.relative_to(root).as_posix()
                self._planned.append((f, str(PurePosixPath(remote_path) / rel), None))

    def total_bytes(self) -> int:
        return sum(src.stat().st_size for src, _, _ in self._planned if isinstance(src, Path))

    def commit(self) -> None:
        changes: dict[str, wire.VolumeFile | None] = {}
        for src, remote, mode in self._planned:
            if isinstance(src, Path):
                with src.open("rb") as fp:
                    entry = self.volume._upload(fp, self.progress)
                st = src.stat()
                entry.mtime = st.st_mtime
                entry.mode = mode if mode is not None else (st.st_mode & 0o777)
            else:
                entry = self.volume._upload(src, self.progress)
                if mode is not None:
                    entry.mode = mode
            changes[remote] = entry
        self._planned = []
        if changes:
            self.volume._op("commit", changes=changes, allow_overwrite=self.force)
