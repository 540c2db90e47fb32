"""The Image methods programs use, end to end (issue 17): `uv_pip_install`,
`pip_install_from_requirements`, `Image.imports()` with a package absent locally, and pip's
options on both runtimes (the process runtime's default image is a cached virtual
environment); `run_function`, `force_build`, `from_dockerfile` and `entrypoint` on both (the
process runtime materialises those images as root filesystems, ``rootfs.py``), with the
build shown live, step by step with each step's time.

Packages come from the machine's package index (small ones). Without a Docker engine the
Docker cluster skips, except under ``CI``, where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import FAST_TIMERS, Cluster
from tests.e2e.test_runtimes import docker_missing

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["process", "docker"])
def rt_cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    runtime = request.param
    if runtime == "docker" and (why := docker_missing()):
        if os.environ.get("CI"):
            pytest.fail(f"{why}, and CI is set")
        pytest.skip(why)
    home = Path(tempfile.mkdtemp(prefix=f"burst-home-imgsdk-{runtime}-", dir="/var/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BURST_")}
    env.update(FAST_TIMERS, BURST_HOME=str(home), HOME=str(home))
    c = Cluster(home, env)
    c.runtime = runtime  # type: ignore[attr-defined]
    up = c.burst("up", "--runtime", runtime, timeout=300)
    if up.returncode != 0:
        c.burst("down")
        raise AssertionError(f"burst up failed:\n{up.stdout}\n{up.stderr}")
    yield c
    down = c.burst("down", timeout=60)
    assert down.returncode == 0, down.stderr
    shutil.rmtree(home, ignore_errors=True)


def runtime(c: Cluster) -> str:
    return str(c.runtime)  # type: ignore[attr-defined]


APP = '''
import json, os, subprocess

import burst

app = burst.App("imgsdk")

# New at each test run (FRESH): built now, with its output, not taken from a cache.
uv_img = burst.Image.debian_slim().env({"FRESH": "@FRESH@"}).uv_pip_install("six==1.16.0")
req_img = burst.Image.debian_slim().pip_install_from_requirements("@DIR@/requirements.txt")
only_there = burst.Image.debian_slim().pip_install("tomli_w==1.0.0")
with only_there.imports():
    import tomli_w  # not installed where this file is run

# A package only in a local find-links directory, as a release and a pre-release.
probe_pip = burst.Image.debian_slim().pip_install("burst-probe", find_links="@LINKS@",
                                                  pre=True, extra_options="--no-compile")
probe_uv = burst.Image.debian_slim().uv_pip_install("burst-probe", find_links="@LINKS@")


def bake(path, word):
    with open(path, "w") as f:
        f.write(f"{word} by uid {os.getuid()}")


baked = burst.Image.debian_slim().run_function(bake, args=("/opt/baked.txt",),
                                               kwargs={"word": "baked"})
forced = (burst.Image.debian_slim().run_commands("echo first > /opt/first")
          .run_commands("cat /proc/sys/kernel/random/uuid > /opt/stamp", force_build=True))
from_df = burst.Image.from_dockerfile("@DIR@/Dockerfile")
no_python = (burst.Image.from_registry("burst-test-nopython:1", add_python="3.11")
             .pip_install("six==1.16.0"))


def report(fn):
    try:
        value = fn.remote()
    except Exception as e:
        value = {"error": type(e).__name__, "message": str(e)}
    print("RESULT", json.dumps(value))


@app.function(image=uv_img, scaledown_window=2)
def uv_six():
    import six
    return [six.__version__, six.__file__.startswith("/usr/")]


@app.function(image=req_img, scaledown_window=2)
def req_attrs():
    import attrs
    return attrs.__version__


@app.function(image=only_there, scaledown_window=2)
def dump():
    return tomli_w.dumps({"a": 1}).strip()


@app.function(image=probe_pip, scaledown_window=2)
def probe_pip_version():
    import burst_probe
    return burst_probe.VERSION


@app.function(image=probe_uv, scaledown_window=2)
def probe_uv_version():
    import burst_probe
    return burst_probe.VERSION


@app.function(image=baked, scaledown_window=2)
def read_baked():
    return open("/opt/baked.txt").read()


@app.function(image=forced, scaledown_window=2)
def stamp():
    return [open("/opt/first").read().strip(), open("/opt/stamp").read().strip()]


@app.function(image=from_df, scaledown_window=2)
def dockerfile_facts():
    return [open("/etc/app/conf.txt").read().strip(), os.environ.get("GREETING"),
            open("marker").read().strip(), os.getcwd(), os.environ.get("FROM_ENTRYPOINT")]


@app.function(image=no_python, scaledown_window=2)
def added_python():
    import sys, six
    return ["{}.{}".format(*sys.version_info[:2]), six.__version__,
            subprocess.run(["sh", "-c", "command -v python3"], capture_output=True,
                           text=True).stdout.strip()]


@app.local_entrypoint()
def main(name: str):
    report(globals()[name])
'''

DOCKERFILE = '''\
# An app's Dockerfile, as Modal reads it
FROM python:3.11-slim
COPY conf.txt /etc/app/conf.txt
ENV GREETING="from the dockerfile"
WORKDIR /srv
RUN echo built \\
    > /srv/marker
ENTRYPOINT ["/bin/sh", "-c", "export FROM_ENTRYPOINT=yes; exec \\"$@\\"", "--"]
'''


def wheel(links: Path, version: str) -> None:
    """A tiny wheel of a package no index has (``burst-probe``)."""
    name = f"burst_probe-{version}"
    with zipfile.ZipFile(links / f"{name}-py3-none-any.whl", "w") as z:
        z.writestr("burst_probe.py", f"VERSION = {version!r}\n")
        z.writestr(f"{name}.dist-info/METADATA",
                   f"Metadata-Version: 2.1\nName: burst-probe\nVersion: {version}\n")
        z.writestr(f"{name}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                   "Root-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{name}.dist-info/RECORD", "")


@pytest.fixture(scope="module")
def app_dir() -> Iterator[Path]:
    # Under /var/tmp: the agent (which builds) reads the find-links directory.
    d = Path(tempfile.mkdtemp(prefix="burst-imgsdk-app-", dir="/var/tmp"))
    links = d / "links"
    links.mkdir()
    wheel(links, "1.0")
    wheel(links, "1.1rc1")
    os.chmod(d, 0o755)
    (d / "requirements.txt").write_text("# pinned\nattrs==23.2.0\n")
    (d / "conf.txt").write_text("conf from the build context\n")
    (d / "Dockerfile").write_text(DOCKERFILE)
    (d / "imgsdk_app.py").write_text(textwrap.dedent(APP).replace("@DIR@", str(d))
                                     .replace("@LINKS@", str(links))
                                     .replace("@FRESH@", os.urandom(4).hex()))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def run(c: Cluster, app_dir: Path, name: str) -> tuple[object, str]:
    proc = c.burst("run", str(app_dir / "imgsdk_app.py"), "--name", name, check=True,
                   timeout=280)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, proc.stdout + proc.stderr
    return json.loads(line[len("RESULT "):]), proc.stdout + proc.stderr


@pytest.mark.timeout(300)
def test_uv_pip_install(rt_cluster: Cluster, app_dir: Path) -> None:
    out, text = run(rt_cluster, app_dir, "uv_six")
    if runtime(rt_cluster) == "docker":
        assert out == ["1.16.0", True], out  # into the image's own Python
    else:
        assert isinstance(out, list) and out[0] == "1.16.0", out
    # The build is shown live, each step in the user's words with its time.
    assert "[image build] Step " in text and ": uv_pip_install('six==1.16.0')" in text, text
    assert " took " in text, text


@pytest.mark.timeout(300)
def test_pip_install_from_requirements(rt_cluster: Cluster, app_dir: Path) -> None:
    out, _ = run(rt_cluster, app_dir, "req_attrs")
    assert out == "23.2.0", out


@pytest.mark.timeout(300)
def test_imports_absent_locally(rt_cluster: Cluster, app_dir: Path) -> None:
    out, _ = run(rt_cluster, app_dir, "dump")
    assert out == "a = 1", out


@pytest.mark.timeout(300)
def test_pip_and_uv_options(rt_cluster: Cluster, app_dir: Path) -> None:
    if runtime(rt_cluster) == "docker":
        pytest.skip("the find-links directory is on the agent's machine, not in the image")
    out, _ = run(rt_cluster, app_dir, "probe_pip_version")
    assert out == "1.1rc1", out  # find_links= and pre=True
    out, _ = run(rt_cluster, app_dir, "probe_uv_version")
    assert out == "1.0", out  # find_links=, and no pre-release without pre=True


@pytest.mark.timeout(300)
def test_run_function(rt_cluster: Cluster, app_dir: Path) -> None:
    out, text = run(rt_cluster, app_dir, "read_baked")
    assert out == "baked by uid 0", out  # at build time, as root, its module not in the image
    assert "run_function('imgsdk_app.bake')" in text, text


@pytest.mark.timeout(300)
def test_force_build_rebuilds_that_step_only(rt_cluster: Cluster, app_dir: Path) -> None:
    first, _ = run(rt_cluster, app_dir, "stamp")
    second, text = run(rt_cluster, app_dir, "stamp")
    assert isinstance(first, list) and isinstance(second, list), (first, second)
    assert first[0] == second[0] == "first"
    assert first[1] != second[1], (first, second)  # the forced step ran again
    # The step before it came from the cache.
    lines = text.splitlines()
    at = next(i for i, ln in enumerate(lines) if "run_commands('echo first > /opt/first')" in ln)
    # (Docker's builder says so; the process runtime's root filesystem builder too.)
    cached = "Using cache" if runtime(rt_cluster) == "docker" else "(cached)"
    assert cached in "\n".join(lines[at:at + 3]), "\n".join(lines[at:at + 3])


@pytest.mark.timeout(300)
def test_from_dockerfile(rt_cluster: Cluster, app_dir: Path) -> None:
    out, _ = run(rt_cluster, app_dir, "dockerfile_facts")
    assert out == ["conf from the build context", "from the dockerfile", "built", "/srv",
                   "yes"], out


@pytest.mark.timeout(300)
def test_from_registry_add_python(rt_cluster: Cluster, app_dir: Path) -> None:
    import docker

    # An image on the engine without any Python (the base image, Python removed).
    ctx = app_dir / "nopython"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(
        "FROM burst-base:py311\nRUN rm -rf /usr/bin/python3* /usr/lib/python3* "
        "/usr/local/lib/python3* /usr/bin/pip* && ! command -v python3\n")
    docker.from_env().images.build(path=str(ctx), tag="burst-test-nopython:1", rm=True)
    out, _ = run(rt_cluster, app_dir, "added_python")
    assert out == ["3.11", "1.16.0", "/usr/local/bin/python3"], out


DEPLOY_APP = '''
import burst

app = burst.App("@NAME@")
image = burst.Image.debian_slim().pip_install("attrs==23.2.0").env({"FRESH": "@FRESH@"})


@app.function(image=image, scaledown_window=2)
def f():
    import attrs
    return attrs.__version__
'''


@pytest.mark.timeout(300)
def test_deploy_shows_the_build_and_fails_with_it(rt_cluster: Cluster, app_dir: Path) -> None:
    fresh = os.urandom(4).hex()  # a new image: built now, not found in a cache
    good = app_dir / "deploy_good.py"
    good.write_text(textwrap.dedent(DEPLOY_APP).replace("@NAME@", "imgdeploy")
                    .replace("@FRESH@", fresh))
    proc = rt_cluster.burst("deploy", str(good), timeout=280)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    lines = [ln for ln in text.splitlines() if ln.startswith("[f] [image build] ")]
    assert lines and " building on agent " in lines[0], text
    assert any(": pip_install('attrs==23.2.0')" in ln for ln in lines), text
    assert any(" took " in ln for ln in lines), text  # each step's time
    assert " ready on agent " in lines[-1], text
    assert "Deployed app imgdeploy" in text, text
    call = rt_cluster.burst("run", str(good) + "::f", timeout=120)
    assert "23.2.0" in call.stdout, call.stdout + call.stderr
    bad = app_dir / "deploy_bad.py"
    bad.write_text(textwrap.dedent(DEPLOY_APP).replace("@NAME@", "imgdeploybad")
                   .replace("attrs==23.2.0", "burst-no-such-package-xyz==0.0.1")
                   .replace("@FRESH@", fresh))
    proc = rt_cluster.burst("deploy", str(bad), timeout=280)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    assert "Image build failed" in text, text
    assert "pip_install('burst-no-such-package-xyz==0.0.1')" in text, text
