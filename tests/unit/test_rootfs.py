"""The process runtime's image store (``rootfs.py``): bounded storage and ``burst image``.

Entries are made by hand here (a ``meta.json`` with a size and a last-use time); building
real layers is covered end to end in tests/e2e/test_images_process.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from burst_agent.runtimes import rootfs

DAY = 86400.0


def entry(store: rootfs.Store, kind: str, name: str, mib: int, days_ago: float) -> Path:
    d = (store.bases if kind == "base" else store.layers) / name
    (d / "fs").mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps({"kind": kind, "label": f"step {name}",
                                             "bytes": mib << 20}))
    t = time.time() - days_ago * DAY
    os.utime(d / "meta.json", (t, t))
    return d


def test_evicts_least_recently_used_past_the_budget(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    store = rootfs.Store(tmp_path / "rootfs", disk_budget_mb=250)
    old = entry(store, "layer", "old", 100, days_ago=3)
    used = entry(store, "layer", "used", 100, days_ago=5)  # oldest, but a view uses it
    mid = entry(store, "base", "mid", 100, days_ago=2)
    new = entry(store, "layer", "new", 100, days_ago=0)
    monkeypatch.setattr(store, "used_paths", lambda: {str(used)})
    assert store.evict() == ["old", "mid"]
    assert not old.exists() and not mid.exists() and used.exists() and new.exists()
    assert store.evict() == []  # within the budget now (200 MiB)


def test_prune_older_than(tmp_path: Path) -> None:
    store = rootfs.Store(tmp_path / "rootfs")
    entry(store, "layer", "a", 1, days_ago=10)
    entry(store, "layer", "b", 1, days_ago=1)
    assert store.prune(5, unmount=False) == ["a"]
    assert [e["name"] for e in store.entries()] == ["b"]
    with pytest.raises(ValueError, match="-1"):
        store.prune(-1)


def test_burst_image_list_and_prune(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    store = rootfs.Store(cache / "burst" / "rootfs")
    entry(store, "base", "debian-bookworm", 3, days_ago=30)
    entry(store, "layer", "recent", 1, days_ago=0)
    burst = str(Path(sys.executable).with_name("burst"))
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    out = subprocess.run([burst, "image", "list", "--json"], env=env, capture_output=True,
                         text=True, check=True)
    listed = json.loads(out.stdout)["entries"]
    assert [(e["name"], e["kind"], e["bytes"]) for e in listed] == [
        ("debian-bookworm", "base", 3 << 20), ("recent", "layer", 1 << 20)]
    out = subprocess.run([burst, "image", "prune", "--older-than", "7"], env=env,
                         capture_output=True, text=True, check=True)
    assert "removed debian-bookworm" in out.stdout and "1 removed" in out.stdout, out.stdout
    assert [e["name"] for e in store.entries()] == ["recent"]
    bad = subprocess.run([burst, "image", "prune", "--older-than", "-2"], env=env,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "--older-than -2" in bad.stderr, bad.stderr


def test_unavailable_python_version_lists_the_available(tmp_path: Path) -> None:
    from burst import wire

    store = rootfs.Store(tmp_path / "rootfs")
    spec = wire.ImageSpec(python_version="3.7", steps=[wire.ImageStep(kind="run_commands",
                                                                      args=["true"])])
    if os.geteuid() != 0:
        pytest.skip("materialising needs root")
    with pytest.raises(rootfs.ImageError, match=r"python_version='3.7'.*available here: 3\.11"):
        store.materialise(spec, lambda line: None)


def test_only_the_most_recent_image_runtimes_stay_warm(tmp_path: Path) -> None:
    from burst_agent.runtimes.venvs import VenvRuntime

    class Warm:
        closed = False

        def close(self) -> None:
            self.closed = True

    store = rootfs.Store(tmp_path / "rootfs")
    rt = VenvRuntime(base=None, make=None, store=store, warm_images=2)  # type: ignore[arg-type]
    a, b, c = Warm(), Warm(), Warm()
    rt._views = {"a": a, "b": b, "c": c}  # type: ignore[dict-item]  # oldest first
    store.in_use["a"] = 1  # a container runs in image a: its runtime stays
    rt._cool(keep="c")
    assert (a.closed, b.closed, c.closed) == (False, True, False)
    assert list(rt._views) == ["a", "c"]


@pytest.mark.parametrize("name, value", [("image_warm_runtimes", 0),
                                         ("image_disk_budget_mb", -5),
                                         ("image_step_timeout", 0.0),
                                         ("image_spare_timeout", 0.0),
                                         ("image_spare_memory_mb", 8),
                                         ("image_spare_python", "maybe"),
                                         ("image_evict_interval", -1.0),
                                         ("image_gpu_spares", -1),
                                         ("image_gpu_spare_idle", 0.0)])
def test_bad_image_settings_are_named(name: str, value: float) -> None:
    from burst_agent.runtimes.factory import make_runtime
    from burst_agent.settings import AgentSettings

    settings = AgentSettings(runtime="process", **{name: value})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"BURST_{name.upper()}={value!r} is not valid"):
        make_runtime(settings, "agent-x")


def test_apt_sources_name_the_images_release_not_the_machines(tmp_path: Path) -> None:
    # A mirror (a real HTTP server) with trixie and trixie-updates but no trixie-security.
    import http.server
    import threading
    from functools import partial

    for suite in ("trixie", "trixie-updates"):
        (tmp_path / "dists" / suite).mkdir(parents=True)
        (tmp_path / "dists" / suite / "InRelease").write_text("x")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        deb822 = (f"Types: deb\nURIs: {uri}\nSuites: bookworm bookworm-updates\n"
                  f"Components: main\n\nTypes: deb\nURIs: {uri}\nSuites: bookworm-security\n"
                  "Components: main\n")
        got = rootfs.apt_sources_for(deb822, "bookworm", "trixie", deb822=True)
        assert "Suites: trixie trixie-updates" in got and "bookworm" not in got, got
        assert "security" not in got, got  # not served there: left out, not a failed update
        one_line = f"deb {uri} bookworm main\ndeb [trusted=yes] {uri} bookworm-security main\n"
        got = rootfs.apt_sources_for(one_line, "bookworm", "trixie", deb822=False)
        assert got.splitlines() == [f"deb {uri} trixie main"], got
        # The machine's own release: unchanged.
        assert rootfs.apt_sources_for(deb822, "bookworm", "bookworm", deb822=True) == deb822
    finally:
        server.shutdown()
