"""Bundles unpack safely also where tarfile has no extraction filters (Python before
3.11.4, e.g. Debian bookworm's 3.11.2 in the compose images)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from burst_agent.bundles import _unpack


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buf.getvalue()


def _file(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


@pytest.fixture(params=["filters", "no_filters"])
def tarfile_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "no_filters":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
        real = tarfile.TarFile.extractall

        def old_extractall(self: tarfile.TarFile, path: str = ".", members: object = None,
                           *, numeric_owner: bool = False, **kw: object) -> None:
            if kw:  # as 3.11.2: no `filter` keyword
                raise TypeError(f"unexpected keyword arguments {sorted(kw)}")
            real(self, path, members, numeric_owner=numeric_owner)  # type: ignore[arg-type]

        monkeypatch.setattr(tarfile.TarFile, "extractall", old_extractall)
    return str(request.param)


def test_plain_bundle_unpacks(tmp_path: Path, tarfile_kind: str) -> None:
    d = tarfile.TarInfo("pkg")
    d.type = tarfile.DIRTYPE
    d.mode = 0o755
    _unpack(_tar([(d, b""), _file("pkg/app.py", b"print(1)\n"),
                  _file("run.sh", b"#!/bin/sh\n", 0o4755)]), tmp_path / "b")
    assert (tmp_path / "b" / "pkg" / "app.py").read_text() == "print(1)\n"
    assert not (tmp_path / "b" / "run.sh").stat().st_mode & 0o4000  # no set-id bit


@pytest.mark.parametrize("evil", ["../escape.py", "/abs.py", "link"])
def test_member_outside_or_not_plain_refused(tmp_path: Path, tarfile_kind: str,
                                             evil: str) -> None:
    info, data = _file(evil)
    if evil == "link":
        info.type, info.linkname, data = tarfile.SYMTYPE, "/etc/passwd", b""
    bundle = _tar([_file("ok.py"), (info, data)])
    if evil == "/abs.py" and tarfile_kind == "filters":
        _unpack(bundle, tmp_path / "b")  # the data filter strips the leading "/"
        assert (tmp_path / "b" / "abs.py").exists()
    else:
        with pytest.raises((RuntimeError, tarfile.TarError)):
            _unpack(bundle, tmp_path / "b")
    assert not (tmp_path / "escape.py").exists() and not Path("/abs.py").exists()
