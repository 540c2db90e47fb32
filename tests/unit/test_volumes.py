"""Volumes without a cluster: mount paths, volume paths, how commits merge, listings,
and the agent's cache bound."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest

import burst
from burst import wire
from burst.exception import InvalidError
from burst_agent.volumes import VolumeCache
from burst_core.volumes import apply, check_path, collect, entries


def module_level_fn() -> None: ...


def vf(text: str) -> wire.VolumeFile:
    sha = hashlib.sha256(text.encode()).hexdigest()
    return wire.VolumeFile(size=len(text), sha256=sha, chunks=[sha])


@pytest.mark.parametrize("path", ["/", "/usr", "/usr/local/x", "/proc", "/etc", "/tmp",
                                  "/__burst/bundle", "/run"])
def test_mount_paths_that_shadow_the_system_are_refused(path: str) -> None:
    vol = burst.Volume.from_name("v")
    app = burst.App("vols")
    with pytest.raises(InvalidError, match=f"mount path '{path}' would shadow the system"):
        app.function(volumes={path: vol})


def test_mount_paths_are_checked() -> None:
    vol = burst.Volume.from_name("v")
    app = burst.App("vols", volumes={"/data": vol})
    with pytest.raises(InvalidError, match="'data' is not an absolute path"):
        app.function(volumes={"data": vol})
    with pytest.raises(InvalidError, match="overlap"):
        app.function(volumes={"/data/sub": vol})
    with pytest.raises(InvalidError, match="is .weights., not a burst.Volume"):
        app.function(volumes={"/models": "weights"})
    with pytest.raises(InvalidError, match="invalid volume name 'bad name'"):
        burst.Volume.from_name("bad name")
    f = app.function(volumes={"/models": vol.read_only()})(module_level_fn)
    assert f.spec.volumes == [
        wire.VolumeMount(name="v", path="/data"),
        wire.VolumeMount(name="v", path="/models", read_only=True)]


@pytest.mark.parametrize("path", ["../x", "/../etc/passwd", "a/../../b", ".."])
def test_paths_escaping_the_volume_are_refused(path: str) -> None:
    with pytest.raises(InvalidError, match="escapes the volume"):
        check_path(path)


def test_paths_are_normalised() -> None:
    assert check_path("/a//b/./c") == "a/b/c"
    assert check_path("a/x/../b") == "a/b"
    assert check_path("/") == ""
    with pytest.raises(InvalidError, match="names the volume's root"):
        check_path("/", allow_root=False)


def test_commits_merge_per_file() -> None:
    base = {"a.txt": vf("a"), "d/b.txt": vf("b"), "d/e/c.txt": vf("c")}
    # Two commits made from the same base, of different files: both land.
    one = apply(base, {"x.txt": vf("x")})
    both = apply(one, {"d/b.txt": vf("b2")})
    assert both["x.txt"] == vf("x") and both["d/b.txt"] == vf("b2")
    # Of one file, the last applied wins; None removes a directory's files.
    assert apply(both, {"x.txt": vf("y")})["x.txt"] == vf("y")
    assert sorted(apply(both, {"d": None})) == ["a.txt", "x.txt"]
    # A file replacing a directory, and a directory replacing a file.
    assert sorted(apply(base, {"d": vf("now a file")})) == ["a.txt", "d"]
    assert sorted(apply(base, {"a.txt/inner": vf("i")})) == ["a.txt/inner", "d/b.txt",
                                                             "d/e/c.txt"]


def test_chunks_no_file_holds_are_deleted_after_the_grace() -> None:
    a, b, c = vf("a"), vf("b"), vf("c")
    old = {"x": a, "y": b}
    # x replaced by c: a is let go now, deleted by a commit past the grace.
    garbage, doomed = collect(old, {"x": c, "y": b}, {}, now=100.0, grace=60.0)
    assert garbage == {a.sha256: 100.0} and doomed == []
    garbage2, doomed = collect({"x": c, "y": b}, {"x": c, "y": b, "z": vf("z")}, garbage,
                               now=161.0, grace=60.0)
    assert doomed == [a.sha256] and garbage2 == {}
    # A chunk held again within the grace (the same bytes uploaded anew) is kept.
    garbage3, doomed = collect({"x": c, "y": b}, {"x": c, "y": b, "w": a}, garbage,
                               now=161.0, grace=60.0)
    assert doomed == [] and garbage3 == {}
    # With no grace, what a commit lets go is deleted by that commit.
    assert collect(old, {"y": b}, {}, now=1.0, grace=0.0) == ({}, [a.sha256])


def test_listings() -> None:
    files = {"a.txt": vf("a"), "d/b.txt": vf("bb"), "d/e/c.txt": vf("c")}
    top = entries(files, "", False)
    assert [(e.path, e.type) for e in top] == [("a.txt", "file"), ("d", "directory")]
    deep = entries(files, "d", True)
    assert [(e.path, e.type, e.size) for e in deep] == [
        ("d/b.txt", "file", 2), ("d/e", "directory", 0), ("d/e/c.txt", "file", 1)]
    with pytest.raises(burst.exception.NotFoundError, match="no file or directory 'nope'"):
        entries(files, "nope", False)


class _Store:
    """Chunks by hash, counting reads (in place of a volume's object store)."""

    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs
        self.reads = 0

    async def get_chunk(self, rec: Any, sha: str) -> bytes:
        self.reads += 1
        return self.blobs[sha]


def test_cache_serves_hits_without_reads_and_evicts_the_least_recently_used(
        tmp_path: Path) -> None:
    texts = ["a" * 400, "b" * 400, "c" * 400]
    files = [vf(t) for t in texts]
    store = _Store({f.sha256: t.encode() for f, t in zip(files, texts, strict=True)})
    cache = VolumeCache(tmp_path / "cache", max_bytes=1000)

    async def run() -> None:
        a, b, c = files
        p = await cache.get(store, None, a)  # type: ignore[arg-type]
        assert p.read_text() == texts[0] and store.reads == 1
        await cache.get(store, None, a)  # type: ignore[arg-type]
        assert store.reads == 1 and cache.hits == 1
        await cache.get(store, None, b)  # type: ignore[arg-type]
        await cache.get(store, None, a)  # type: ignore[arg-type]  # a is now the newest
        await cache.get(store, None, c)  # type: ignore[arg-type]  # 1200 > 1000: b goes
        assert not cache.path(b.sha256).exists()
        assert cache.path(a.sha256).exists() and cache.path(c.sha256).exists()
        assert cache.size <= 1000

    asyncio.run(run())
    # A cache made again over the same folder keeps what is there.
    again = VolumeCache(tmp_path / "cache", max_bytes=1000)
    assert again.size == 800
