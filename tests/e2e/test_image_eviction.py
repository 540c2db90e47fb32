"""The agent keeps its image store within ``BURST_IMAGE_DISK_BUDGET_MB`` (issue 17), end to
end: on a cluster whose store (its own, under ``XDG_CACHE_HOME``) has a 1 MiB budget, an
image whose containers are gone is removed when another image's container starts; the
image in use stays (one image runtime kept warm: a warm one's spare sandbox holds its
image's view, which is never removed). Process runtime, as root (root filesystems need it)."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from burst_agent.runtimes import rootfs
from tests.e2e.conftest import Cluster, running_cluster
from tests.waiting import eventually

pytestmark = pytest.mark.e2e

APP = '''
import burst

app = burst.App("image-eviction")
first = burst.Image.debian_slim().run_commands("head -c 3000000 /dev/zero > /opt/first")
second = burst.Image.debian_slim().run_commands("head -c 3000000 /dev/zero > /opt/second")


@app.function(image=first, scaledown_window=2)
def on_first():
    return len(open("/opt/first", "rb").read())


@app.function(image=second, scaledown_window=2)
def on_second():
    return len(open("/opt/second", "rb").read())


@app.local_entrypoint()
def main(which: str):
    print("RESULT", (on_first if which == "first" else on_second).remote())
'''


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("xdg-cache")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, store_dir: Path) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("root filesystems need root, and CI is set")
        pytest.skip("root filesystems need root")
    yield from running_cluster(tmp_path_factory, BURST_RUNTIME="process",
                               BURST_IMAGE_DISK_BUDGET_MB="1",
                               # (a warm image runtime's spare sandbox keeps its view)
                               BURST_IMAGE_WARM_RUNTIMES="1",
                               XDG_CACHE_HOME=str(store_dir))


def labels(store_dir: Path) -> list[str]:
    store = rootfs.Store(store_dir / "burst" / "rootfs")
    return [str(e["label"]) for e in store.entries()]


def run(c: Cluster, app: Path, which: str) -> str:
    proc = c.burst("run", str(app), "--which", which, timeout=280)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), "")
    return line


@pytest.mark.timeout(600)
def test_least_recently_used_image_evicted_past_the_budget(cluster: Cluster, store_dir: Path,
                                                            tmp_path: Path) -> None:
    app = tmp_path / "evict_app.py"
    app.write_text(textwrap.dedent(APP))
    assert run(cluster, app, "first") == "RESULT 3000000"
    assert any("/opt/first" in label for label in labels(store_dir)), labels(store_dir)

    # Each run of the second image starts a container, and the agent evicts then (at most
    # every 10 s): once the first image's container is gone, its layer goes.
    def first_evicted() -> bool:
        assert run(cluster, app, "second") == "RESULT 3000000"
        return not any("/opt/first" in label for label in labels(store_dir))

    eventually(first_evicted, 180, "the first image evicted", step=1.0)
    assert any("/opt/second" in label for label in labels(store_dir)), labels(store_dir)
    log = (cluster.home / "logs" / "agent.log").read_text()
    assert '"images_evicted"' in log, log[-3000:]
