"""Where the SDK and CLI find their cluster: one profile (URL, token, workspace).

Configurability is kept to a minimum. A profile comes from, in order:

1. the environment: ``BURST_URL`` and ``BURST_TOKEN`` (both, or neither), with an optional
   ``BURST_WORKSPACE``;
2. ``$BURST_HOME/profile.json`` (``BURST_HOME`` defaults to ``~/.burst``), which
   ``burst up`` writes for the cluster it starts.

This module is imported by user code and the container shim: standard library only.

Example::

    from burst.config import load_profile

    profile = load_profile()  # raises burst.exception.AuthError when there is none
    print(profile.url, profile.workspace)
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path

from burst.exception import AuthError, InvalidError

PROFILE_FILE = "profile.json"
DEFAULT_WORKSPACE = "default"

_HOW_TO_FIX = "run `burst up` to start a local cluster, or set BURST_URL and BURST_TOKEN"


@dataclasses.dataclass(frozen=True)
class Profile:
    """How to reach one Burst cluster."""

    #: Base URL of the gateway, e.g. ``http://127.0.0.1:8780``.
    url: str
    #: API token (``bst_...``), sent as ``Authorization: Bearer <token>``.
    token: str
    #: Workspace the token belongs to.
    workspace: str = DEFAULT_WORKSPACE

    def __repr__(self) -> str:  # never print a token by accident
        return f"Profile(url={self.url!r}, token='***', workspace={self.workspace!r})"


def burst_home(env: Mapping[str, str] | None = None) -> Path:
    """Burst's state directory: ``$BURST_HOME``, else ``~/.burst``."""
    env = os.environ if env is None else env
    home = env.get("BURST_HOME")
    return Path(home).expanduser() if home else Path.home() / ".burst"


def profile_path(home: Path) -> Path:
    return home / PROFILE_FILE


def load_profile(env: Mapping[str, str] | None = None) -> Profile:
    """The profile to use: from the environment if set there, else from the profile file.

    Raises :class:`~burst.exception.AuthError` naming what to do when there is none.
    """
    env = os.environ if env is None else env
    from_env = _profile_from_env(env)
    if from_env is not None:
        return from_env
    path = profile_path(burst_home(env))
    if not path.exists():
        raise AuthError(
            f"no Burst profile found (no BURST_URL/BURST_TOKEN, no {path}): {_HOW_TO_FIX}"
        )
    return read_profile(path)


def read_profile(path: Path) -> Profile:
    """Read one profile file; raises AuthError when it is missing or malformed."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise AuthError(f"no Burst profile at {path}: {_HOW_TO_FIX}") from None
    except (OSError, ValueError) as e:
        raise AuthError(f"cannot read the Burst profile {path} ({e}): {_HOW_TO_FIX}") from None
    if not isinstance(raw, dict):
        raise AuthError(f"the Burst profile {path} is not a JSON object: {_HOW_TO_FIX}")
    url, token = raw.get("url"), raw.get("token")
    workspace = raw.get("workspace") or DEFAULT_WORKSPACE
    if not (isinstance(url, str) and url and isinstance(token, str) and token):
        raise AuthError(f"the Burst profile {path} lacks a url or token: {_HOW_TO_FIX}")
    if not isinstance(workspace, str):
        raise AuthError(f"the Burst profile {path} has an invalid workspace: {_HOW_TO_FIX}")
    return Profile(url=url.rstrip("/"), token=token, workspace=workspace)


def write_profile(home: Path, profile: Profile) -> Path:
    """Write ``profile`` to ``home/profile.json``, readable by its owner only (0600).

    The file is replaced atomically, so a reader never sees half of it.
    """
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = profile_path(home)
    tmp = path.with_name(f".{PROFILE_FILE}.{os.getpid()}.tmp")
    data = json.dumps(dataclasses.asdict(profile), indent=2) + "\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(data)
        os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to an existing file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _profile_from_env(env: Mapping[str, str]) -> Profile | None:
    url, token = env.get("BURST_URL", ""), env.get("BURST_TOKEN", "")
    if not url and not token:
        return None
    if not url or not token:
        have, lack = ("BURST_URL", "BURST_TOKEN") if url else ("BURST_TOKEN", "BURST_URL")
        raise AuthError(
            f"{have} is set but {lack} is not: set both, or unset {have} to use the profile "
            "that `burst up` writes"
        )
    workspace = env.get("BURST_WORKSPACE") or DEFAULT_WORKSPACE
    return Profile(url=url.rstrip("/"), token=token, workspace=workspace)


def seconds_setting(name: str, default: float, env: Mapping[str, str] | None = None) -> float:
    """A client-side timer from the environment variable ``name`` (seconds, >= 0), or
    ``default`` when it is unset or empty."""
    env = os.environ if env is None else env
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise InvalidError(f"{name}={raw!r} is not allowed: use a number of seconds >= 0")
    return value
