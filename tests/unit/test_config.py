from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from burst.config import Profile, load_profile, profile_path, read_profile, write_profile
from burst.exception import AuthError


def _home_with_profile(tmp_path: Path) -> Path:
    home = tmp_path / "burst-home"
    write_profile(home, Profile(url="http://127.0.0.1:8780/", token="bst_file", workspace="team"))
    return home


def test_profile_file_is_used_without_env(tmp_path: Path) -> None:
    home = _home_with_profile(tmp_path)
    profile = load_profile({"BURST_HOME": str(home)})
    assert profile == Profile(url="http://127.0.0.1:8780", token="bst_file", workspace="team")


def test_env_wins_over_profile_file(tmp_path: Path) -> None:
    home = _home_with_profile(tmp_path)
    env = {"BURST_HOME": str(home), "BURST_URL": "http://127.0.0.1:9999", "BURST_TOKEN": "bst_env"}
    profile = load_profile(env)
    assert profile == Profile(url="http://127.0.0.1:9999", token="bst_env", workspace="default")
    assert load_profile({**env, "BURST_WORKSPACE": "ml"}).workspace == "ml"


def test_missing_profile_and_env_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(AuthError) as e:
        load_profile({"BURST_HOME": str(tmp_path / "nothing-here")})
    message = str(e.value)
    assert "burst up" in message
    assert "BURST_URL" in message and "BURST_TOKEN" in message
    assert str(tmp_path / "nothing-here" / "profile.json") in message


def test_home_defaults_to_dot_burst(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    write_profile(tmp_path / ".burst", Profile(url="http://127.0.0.1:1", token="bst_x"))
    assert load_profile({}).token == "bst_x"


@pytest.mark.parametrize(
    ("env", "have", "lack"),
    [
        ({"BURST_URL": "http://127.0.0.1:8780"}, "BURST_URL", "BURST_TOKEN"),
        ({"BURST_TOKEN": "bst_env"}, "BURST_TOKEN", "BURST_URL"),
    ],
)
def test_half_of_the_env_pair_is_an_error(
    tmp_path: Path, env: dict[str, str], have: str, lack: str
) -> None:
    home = _home_with_profile(tmp_path)
    with pytest.raises(AuthError, match=f"{have} is set but {lack} is not"):
        load_profile({"BURST_HOME": str(home), **env})


def test_write_profile_is_private_and_round_trips(tmp_path: Path) -> None:
    home = tmp_path / "h"
    home.mkdir()
    profile_path(home).write_text("{}")
    profile_path(home).chmod(0o644)  # an existing, too-open file is replaced by a 0600 one
    path = write_profile(home, Profile(url="http://127.0.0.1:8780", token="bst_secret"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {
        "url": "http://127.0.0.1:8780",
        "token": "bst_secret",
        "workspace": "default",
    }
    assert read_profile(path).token == "bst_secret"
    assert list(home.iterdir()) == [path]  # no temporary file left behind


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"url": "http://x"}', '{"token": "t"}'])
def test_malformed_profile_is_an_auth_error(tmp_path: Path, content: str) -> None:
    profile_path(tmp_path).write_text(content)
    with pytest.raises(AuthError, match="burst up"):
        load_profile({"BURST_HOME": str(tmp_path)})


def test_repr_hides_the_token() -> None:
    assert "bst_secret" not in repr(Profile(url="http://127.0.0.1:1", token="bst_secret"))


def test_config_imports_only_the_standard_library() -> None:
    code = (
        "import sys, burst.config; "
        "heavy = {'typer', 'rich', 'fastapi', 'uvicorn', 'nats', 'httpx', 'click'}; "
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
