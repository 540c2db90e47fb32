"""The Image methods programs use (issue 17): the Dockerfile parser, requirements and
pyproject files, options and bad input, force_build, Image.imports(), run_function's pickle,
and the one translation of each command-like step into the shell it runs in the image."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import msgspec
import pytest

import burst
from burst import wire
from burst.exception import InvalidError
from burst_agent.runtimes import images

BASE = burst.Image.debian_slim()


# ---- from_dockerfile ---------------------------------------------------------------
def dockerfile(tmp_path: Path, text: str) -> Path:
    (tmp_path / "app").mkdir(exist_ok=True)
    (tmp_path / "app" / "conf.txt").write_text("conf")
    (tmp_path / "app" / "pkg").mkdir(exist_ok=True)
    (tmp_path / "app" / "pkg" / "a.py").write_text("A = 1\n")
    path = tmp_path / "app" / "Dockerfile"
    path.write_text(textwrap.dedent(text))
    return path


def test_dockerfile_becomes_steps(tmp_path: Path) -> None:
    path = dockerfile(tmp_path, """\
        # syntax comment
        FROM python:3.11-slim AS build

        RUN apt-get update && \\
            # a comment inside a continuation
            echo done
        RUN ["echo", "exec form"]
        ENV A=1 B="two words"
        ENV OLD legacy form
        WORKDIR /srv
        WORKDIR app
        COPY conf.txt /etc/conf.txt
        ADD pkg ./pkg
        COPY conf.txt pkg/a.py /many/
        ENTRYPOINT ["/bin/sh", "-c", "exec \\"$@\\"", "--"]
        """)
    img = burst.Image.from_dockerfile(path)
    spec = img.spec
    assert spec.base == "debian_slim" and spec.python_version == "3.11"
    got = [(s.kind, s.args, s.env, s.path) for s in spec.steps]
    assert got == [
        ("run_commands", ["apt-get update && echo done"], {}, ""),
        ("run_commands", ["echo 'exec form'"], {}, ""),
        ("env", [], {"A": "1", "B": "two words"}, ""),
        ("env", [], {"OLD": "legacy form"}, ""),
        ("workdir", [], {}, "/srv"),
        ("workdir", [], {}, "/srv/app"),
        ("add_local_file", [str(tmp_path / "app" / "conf.txt")], {}, "/etc/conf.txt"),
        ("add_local_dir", [str(tmp_path / "app" / "pkg")], {}, "/srv/app/pkg"),
        ("add_local_file", [str(tmp_path / "app" / "conf.txt")], {}, "/many/conf.txt"),
        ("add_local_file", [str(tmp_path / "app" / "pkg" / "a.py")], {}, "/many/a.py"),
        ("entrypoint", ["/bin/sh", "-c", 'exec "$@"', "--"], {}, ""),
    ]
    assert spec.steps[7].files == {"a.py": b"A = 1\n"}
    # Another base tag is an image of the engine, as from_registry.
    other = dockerfile(tmp_path, "FROM ubuntu:24.04\nRUN true\n")
    assert burst.Image.from_dockerfile(other).spec.registry_tag == "ubuntu:24.04"


@pytest.mark.parametrize(("text", "message"), [
    ("FROM python:3.11-slim\nRUN true\nEXPOSE 80\n",
     "line 3: the instruction EXPOSE is not supported"),
    ("FROM python:3.11-slim\n\nCMD [\"python\"]\n", "line 3: the instruction CMD is not supported"),
    ("FROM python:3.11-slim\nFROBNICATE x\n",
     "line 2: the Dockerfile does not parse: unknown instruction 'FROBNICATE'"),
    ("RUN true\n", "line 1: the Dockerfile does not parse: RUN before FROM"),
    ("# only a comment\n", "does not parse: no FROM instruction"),
    ("FROM a\nFROM b\n", "line 2: a second FROM (a multi-stage build) is not supported"),
    ("FROM python:3.11-slim\nCOPY missing.txt /x\n",
     "line 2: COPY source 'missing.txt' is not in the build context"),
    ("FROM python:3.11-slim\nCOPY --from=build /a /b\n",
     "line 2: the flag --from of COPY is not supported"),
    ("FROM python:3.11-slim\nADD https://example.com/x /x\n", "line 2: ADD of a URL"),
    ("FROM python:3.11-slim\nRUN [\"unclosed\"\n", "line 2: invalid JSON array"),
    ("FROM python:3.11-slim\nENV =x\n", "line 2: the Dockerfile does not parse: ENV item '=x'"),
    ("FROM python:3.11-slim\nCOPY ../outside /x\n", "line 2: COPY source '../outside' is"),
])
def test_dockerfile_errors_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "outside").write_text("secret")
    path = dockerfile(tmp_path, text)
    with pytest.raises(InvalidError) as e:
        burst.Image.from_dockerfile(path)
    assert message in str(e.value) and str(path) in str(e.value)


def test_dockerfile_missing_file_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidError, match="'/no/such/Dockerfile' is not a file"):
        burst.Image.from_dockerfile("/no/such/Dockerfile")


# ---- requirements and pyproject ----------------------------------------------------
def test_requirements_file_read_with_includes_and_options(tmp_path: Path) -> None:
    (tmp_path / "base.txt").write_text("idna==3.7  # pinned\n"
                                       "--extra-index-url https://extra.example/simple\n")
    req = tmp_path / "requirements.txt"
    req.write_text("# deps\n-r base.txt\nsix==1.16.0 \\\n  ; python_version >= '3'\n--pre\n"
                   "--index-url https://index.example/simple\n")
    img = BASE.pip_install_from_requirements(req, find_links="/opt/wheels")
    step = img.spec.steps[0]
    assert step.kind == "pip_install_from_requirements"
    assert step.args == ["idna==3.7", "six==1.16.0 ; python_version >= '3'"]
    assert (step.index_url, step.extra_index_url, step.find_links, step.pre) == (
        "https://index.example/simple", "https://extra.example/simple", "/opt/wheels", True)
    assert images.describe(step) == f"pip_install_from_requirements({str(req)!r})"
    # The file's content, not its name, makes the hash.
    before = img.content_hash
    req.write_text("six==1.16.0\n")
    assert BASE.pip_install_from_requirements(req).content_hash != before
    bad = tmp_path / "bad.txt"
    bad.write_text("six\n-e ./local\n")
    with pytest.raises(InvalidError, match=r"bad.txt', line 2: the option -e is not supported"):
        BASE.pip_install_from_requirements(bad)
    with pytest.raises(InvalidError, match="requirements file '/no/such.txt' is not a file"):
        BASE.pip_install_from_requirements("/no/such.txt")
    uv = BASE.uv_pip_install("attrs", requirements=[str(req)])
    assert uv.spec.steps[0].args == ["attrs", "six==1.16.0"]
    with pytest.raises(InvalidError, match="requirements= takes a list"):
        BASE.uv_pip_install(requirements=str(req))  # type: ignore[arg-type]


def test_pyproject_dependencies_and_groups(tmp_path: Path) -> None:
    py = tmp_path / "pyproject.toml"
    py.write_text('[project]\nname = "x"\ndependencies = ["six==1.16.0"]\n'
                  '[project.optional-dependencies]\nnet = ["idna==3.7"]\ntest = ["attrs"]\n')
    step = BASE.pip_install_from_pyproject(py, optional_dependencies=["net"]).spec.steps[0]
    assert step.args == ["six==1.16.0", "idna==3.7"]
    with pytest.raises(InvalidError,
                       match=r"no optional dependency group 'gpu' \(it has: net, test\)"):
        BASE.pip_install_from_pyproject(py, optional_dependencies=["gpu"])
    (tmp_path / "broken.toml").write_text("[project\n")
    with pytest.raises(InvalidError, match="does not parse"):
        BASE.pip_install_from_pyproject(tmp_path / "broken.toml")
    (tmp_path / "tool.toml").write_text("[tool.x]\na = 1\n")
    with pytest.raises(InvalidError, match="has no \\[project\\] table"):
        BASE.pip_install_from_pyproject(tmp_path / "tool.toml")


# ---- options and bad input ---------------------------------------------------------
@pytest.mark.parametrize(("bad", "message"), [
    (lambda: BASE.pip_install(3), "expected non-empty strings, got 3"),
    (lambda: BASE.uv_pip_install(["six", None]), "got None"),
    (lambda: BASE.pip_install("six", pre="yes"), "pre= takes True or False, got 'yes'"),
    (lambda: BASE.pip_install("six", index_url="not a url"), "index_url= takes a URL"),
    (lambda: BASE.pip_install("six", extra_options="--x 'unclosed"), "does not parse"),
    (lambda: BASE.pip_install("six", env={"A": 1}), "invalid variable 'A'=1"),
    (lambda: BASE.pip_install("six", force_build="yes"), "force_build= takes True or False"),
    (lambda: BASE.run_function("not callable"), "expected a function, got 'not callable'"),
    (lambda: BASE.entrypoint("/bin/sh -c"), "expected a list of strings"),
    (lambda: burst.Image.from_registry("x:1", add_python="2.7"),
     "add_python='2.7' is not available"),
    (lambda: BASE.pip_install("six", bogus=1), "unknown option bogus="),
])
def test_bad_values_named(bad: object, message: str) -> None:
    with pytest.raises(InvalidError) as e:
        bad()  # type: ignore[operator]
    assert message in str(e.value)


def test_force_build_makes_the_step_new_each_time(monkeypatch: pytest.MonkeyPatch) -> None:
    a = BASE.pip_install("six").run_commands("echo hi", force_build=True)
    b = BASE.pip_install("six").run_commands("echo hi", force_build=True)
    assert a.content_hash != b.content_hash
    assert a.spec.steps[1].force_build and not a.spec.steps[0].force_build
    # The Dockerfile changes at that step: it and every later one miss Docker's cache.
    text = images.dockerfile(a.spec, []).text.splitlines()
    label = next(i for i, ln in enumerate(text) if ln.startswith("LABEL burst.force_build.1="))
    assert "pip install" in text[label - 1] and "echo hi" in text[label + 1]
    plain = BASE.pip_install("six").run_commands("echo hi")
    assert plain.content_hash == BASE.pip_install("six").run_commands("echo hi").content_hash
    monkeypatch.setenv("BURST_FORCE_BUILD", "1")  # as MODAL_FORCE_BUILD: every step
    assert BASE.pip_install("six").spec.steps[0].force_build


def test_force_build_on_the_base_makes_every_step_new() -> None:
    for make in (lambda f: burst.Image.debian_slim(force_build=f),
                 lambda f: burst.Image.from_registry("x:1", force_build=f)):
        a, b = make(True).run_commands("echo hi"), make(True).run_commands("echo hi")
        assert a.content_hash != b.content_hash and a.spec.force_build
        assert make(False).run_commands("echo hi").content_hash == \
            make(False).run_commands("echo hi").content_hash
        # Named the same in the client and in its containers (Image.imports()).
        assert a.spec.ident == b.spec.ident == make(False).run_commands("echo hi").spec.ident
        # Docker: a changed instruction right after FROM, so every step misses the cache.
        text = images.dockerfile(a.spec, []).text.splitlines()
        label = next(i for i, ln in enumerate(text) if ln.startswith("LABEL burst.force_build="))
        assert label < next(i for i, ln in enumerate(text) if "echo hi" in ln)


# ---- step_shell: the one translation ------------------------------------------------
def test_step_shell_translates_each_command_step() -> None:
    img = (BASE.pip_install("six==1.16.0", index_url="https://i.example/simple",
                            extra_index_url="https://e.example/simple", find_links="/w",
                            pre=True, extra_options="--no-compile", env={"PIP_X": "1"})
           .uv_pip_install("idna", pre=True).apt_install("curl").run_commands("a", "b")
           .env({"K": "v"}).workdir("/w").entrypoint(["tini"]))
    pip, uv, apt, cmds, env, wd, ep = img.spec.steps
    assert images.step_shell(pip) == [
        "export PIP_X=1; python3 -m pip install --no-cache-dir --index-url "
        "https://i.example/simple --extra-index-url https://e.example/simple --find-links /w "
        "--pre --no-compile six==1.16.0"]
    [line] = images.step_shell(uv) or []
    assert "--target /opt/burst/uv uv" in line and "UV_" in line
    assert line.endswith("/opt/burst/uv/bin/uv pip install --system --break-system-packages "
                         "--no-cache --prerelease=allow idna")
    [apt_line] = images.step_shell(apt) or []
    assert "apt-get install -y -q --no-install-recommends curl" in apt_line
    assert images.step_shell(cmds) == ["a", "b"]
    assert [images.step_shell(s) for s in (env, wd, ep)] == [None, None, None]
    # The Docker runtime runs exactly these, a RUN each.
    text = images.dockerfile(img.spec, []).text
    for step in (pip, uv, apt, cmds):
        for cmd in images.step_shell(step) or []:
            assert f"RUN {json.dumps(['/bin/sh', '-c', cmd])}" in text
    assert 'ENTRYPOINT ["tini"]' in text


def test_uv_settings_come_from_pips_configuration(tmp_path: Path) -> None:
    links = tmp_path / "wheels"
    links.mkdir()
    env = {**os.environ, "PIP_INDEX_URL": "https://index.example/simple",
           "PIP_EXTRA_INDEX_URL": f"file:///no/such/dir https://extra.example/simple "
                                  f"file://{tmp_path}",
           "PIP_FIND_LINKS": f"{links} /no/such/links", "PIP_CERT": "/etc/hostname",
           "PIP_CONFIG_FILE": os.devnull}
    out = subprocess.run([sys.executable, "-c", images.UV_SETTINGS, "json"], env=env,
                         capture_output=True, text=True, check=True).stdout
    settings = json.loads(out)
    assert settings["UV_INDEX_URL"] == "https://index.example/simple"
    # Locations missing where uv runs are left out; pip's best match across indexes kept.
    assert settings["UV_EXTRA_INDEX_URL"] == f"https://extra.example/simple file://{tmp_path}"
    assert settings["UV_FIND_LINKS"] == str(links)
    assert settings["SSL_CERT_FILE"] == "/etc/hostname"
    assert settings["UV_INDEX_STRATEGY"] == "unsafe-best-match"
    shell = subprocess.run([sys.executable, "-c", images.UV_SETTINGS], env=env,
                           capture_output=True, text=True, check=True).stdout
    assert "export UV_INDEX_URL=https://index.example/simple\n" in shell


# ---- run_function ------------------------------------------------------------------
def test_run_function_runs_from_its_pickle_alone(tmp_path: Path) -> None:
    mod = tmp_path / "rf_mod.py"
    mod.write_text("SUFFIX = '!'\n"
                   "def bake(path, word='hi'):\n"
                   "    open(path, 'w').write(word + SUFFIX)\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import rf_mod  # type: ignore[import-not-found]

        out = tmp_path / "baked.txt"
        step = BASE.run_function(rf_mod.bake, args=(str(out),),
                                 kwargs={"word": "baked"}).spec.steps[0]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("rf_mod", None)
    assert step.source == "rf_mod.bake" and images.describe(step) == "run_function('rf_mod.bake')"
    # Where the module does not exist: the files of step_files, then the command of step_shell.
    root = tmp_path / "image"
    for dest, data in images.step_files(step).items():
        p = root / dest.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    [cmd] = images.step_shell(step) or []
    cmd = cmd.replace(images.BUILD_DIR, str(root) + images.BUILD_DIR)
    python = Path(sys.base_prefix) / "bin" / "python3"  # no cloudpickle, no rf_mod
    env = {"PATH": f"{python.parent}:/usr/bin:/bin"}
    done = subprocess.run(["/bin/sh", "-c", cmd], env=env, cwd="/", capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert out.read_text() == "baked!"
    wrong = msgspec.structs.replace(step, args=["2.7"])
    [cmd] = images.step_shell(wrong) or []
    cmd = cmd.replace(images.BUILD_DIR, str(root) + images.BUILD_DIR)
    done = subprocess.run(["/bin/sh", "-c", cmd], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "defined under Python 2.7" in done.stderr


# ---- imports() ---------------------------------------------------------------------
def test_imports_skipped_outside_the_image_and_recorded() -> None:
    img = BASE.pip_install("no_such_pkg_xyz")
    with img.imports():
        import json as _json  # noqa: F401

        import no_such_pkg_xyz  # type: ignore[import-not-found]  # noqa: F401
    assert img.spec.imports == ["json", "no_such_pkg_xyz"]
    assert img.content_hash == BASE.pip_install("no_such_pkg_xyz").content_hash
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with img.imports():
            raise RuntimeError("not an import")
    assert "RuntimeError('not an import')" in str(caught[0].message)


def test_imports_raise_in_a_container_of_that_image(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("six\n")

    def make() -> burst.Image:
        return (BASE.pip_install_from_requirements(req).add_local_python_source("burst_core")
                .add_local_file(req, "/r.txt", copy=True).run_commands("x", force_build=True))

    here = make()
    monkeypatch.setenv("BURST_SHIM_SOCKET", "/run/burst/shim.sock")
    req.unlink()  # in the container the local files are not there
    there = make()
    assert there.spec.ident == here.spec.ident  # the same image, named the same
    monkeypatch.setenv("BURST_IMAGE_ID", here.spec.ident)
    with pytest.raises(ImportError), there.imports():
        import no_such_pkg_xyz  # type: ignore[import-not-found]  # noqa: F401
    other = BASE.pip_install("something else")
    assert other.spec.ident != here.spec.ident
    with other.imports():  # another image's imports: skipped in this container
        import no_such_pkg_xyz  # type: ignore[import-not-found]  # noqa: F401,F811


def test_image_id_reaches_the_container_spec() -> None:
    img = BASE.pip_install("six")
    spec = msgspec.msgpack.decode(msgspec.msgpack.encode(img.spec), type=wire.ImageSpec)
    assert spec.ident == img.spec.ident and len(spec.ident) == 32


def test_add_python_copies_the_base_interpreter_in() -> None:
    img = burst.Image.from_registry("bare:1", add_python="3.11").pip_install("six")
    df = images.dockerfile(img.spec, ["w.whl"])
    lines = df.text.splitlines()
    assert lines[0] == "FROM burst-base:py311 AS burst-python"
    assert "FROM bare:1" in lines and "COPY --from=burst-python / /opt/burst/python-root/" in lines
    # The user's steps come after the Python is in place, and are labelled as theirs.
    pip = next(i for i, ln in enumerate(lines, 1) if "pip install --no-cache-dir six" in ln)
    assert pip > lines.index("FROM bare:1") and df.labels[pip] == "pip_install('six')"
    assert "--argv0" in lines[1]
    assert repr(img) == "Image.from_registry('bare:1', add_python='3.11').pip_install('six')"


def test_a_build_step_after_local_files_added_at_start_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "conf.txt"
    conf.write_text("x")
    start = BASE.add_local_file(conf, "/etc/conf.txt")  # copy=False: Modal's default
    with pytest.raises(InvalidError, match="copy=True"):
        start.run_commands("cat /etc/conf.txt")
    with pytest.raises(InvalidError, match="copy=True"):
        start.pip_install("six")
    # More local files, or Python source, may follow; a copied file is a build step.
    start.add_local_dir(tmp_path, "/more").add_local_python_source("burst_core")
    BASE.add_local_file(conf, "/etc/conf.txt", copy=True).run_commands("cat /etc/conf.txt")


def test_files_added_at_start_are_not_in_the_hash_nor_built(tmp_path: Path) -> None:
    from burst import _bundle
    from burst_agent.runtimes import rootfs

    conf = tmp_path / "conf.txt"
    conf.write_text("one")
    mounted1 = BASE.run_commands("true").add_local_file(conf, "/etc/conf.txt")
    copied1 = BASE.run_commands("true").add_local_file(conf, "/etc/conf.txt", copy=True)
    conf.write_text("two")
    mounted2 = BASE.run_commands("true").add_local_file(conf, "/etc/conf.txt")
    copied2 = BASE.run_commands("true").add_local_file(conf, "/etc/conf.txt", copy=True)
    # A changed file added at start is the same image; a copied one is a new image.
    assert mounted1.content_hash == mounted2.content_hash
    assert copied1.content_hash != copied2.content_hash
    # Where it goes still names the image.
    assert BASE.run_commands("true").add_local_file(conf, "/etc/other.txt").content_hash \
        != mounted2.content_hash
    # No build step copies it (Docker) and the default image stays the fast path.
    assert "conf.txt" not in images.dockerfile(mounted2.spec, ["w.whl"]).text
    assert not rootfs.needs_rootfs(BASE.add_local_file(conf, "/etc/conf.txt").spec)
    assert rootfs.needs_rootfs(BASE.add_local_file(conf, "/etc/conf.txt", copy=True).spec)
    # Sent as a bundle of its own: deterministic, by content.
    assert _bundle.of_files({"a": b"1"}).hash == _bundle.of_files({"a": b"1"}).hash
    assert _bundle.of_files({"a": b"1"}).hash != _bundle.of_files({"a": b"2"}).hash


def test_add_local_dir_leaves_out_what_ignore_names(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "big.csv").write_text("1,2")
    (tmp_path / "keep.py").write_text("x = 1")
    (tmp_path / "notes.csv").write_text("a")
    by_glob = BASE.add_local_dir(tmp_path, "/app", ignore=["*.csv"])
    assert set(by_glob.spec.steps[-1].files) == {"keep.py"}
    by_fn = BASE.add_local_dir(tmp_path, "/app", ignore=lambda p: p.parts[0] == "data")
    assert set(by_fn.spec.steps[-1].files) == {"keep.py", "notes.csv"}
    with pytest.raises(InvalidError, match="ignore="):
        BASE.add_local_dir(tmp_path, "/app", ignore=[3])  # type: ignore[list-item]
