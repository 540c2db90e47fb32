"""``Secret``: credentials a function's containers get as environment variables.

Example::

    import burst

    app = burst.App("demo", secrets=[burst.Secret.from_name("openai")])

    @app.function(secrets=[burst.Secret.from_dict({"MODE": "prod"})])
    def f() -> str:
        import os
        return os.environ["OPENAI_API_KEY"] + os.environ["MODE"]

Stored secrets are made with ``burst secret create NAME KEY=VALUE...``. Secrets made in
code (:meth:`Secret.from_dict`, :meth:`Secret.from_dotenv`,
:meth:`Secret.from_local_environ`) are read on the machine that deploys, when it deploys
(never in the container, which imports the same module), and travel sealed with the
deployment. Later secrets override earlier ones' keys: the App's first, then the
function's, each list in order.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from burst import wire
from burst.exception import InvalidError

NAME_MAX = 63
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_-]{{0,{NAME_MAX - 1}}}")
NAME_RULE = (f"1-{NAME_MAX} characters: letters, digits, '-' and '_', starting with a letter "
             "or digit")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
KEY_RULE = ("an environment variable name: letters, digits and '_', not starting with a "
            "digit, at most 256 characters")
#: Most bytes of keys and values in one secret.
MAX_BYTES = 64 << 10


def check_name(name: object) -> str:
    """``name`` if it is a valid secret name, else :class:`InvalidError` naming it."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidError(f"invalid secret name {wire.quote_value(name)}: use {NAME_RULE}")
    return name


def check_values(values: object, where: str = "secret") -> dict[str, str]:
    """``values`` if every key is an environment variable name and every value a string;
    errors name the key, never a value."""
    if not isinstance(values, dict):
        raise InvalidError(f"{where} takes a dict of str to str, got {type(values).__name__}")
    size = 0
    for k, v in values.items():
        if not isinstance(k, str) or not _KEY.fullmatch(k):
            raise InvalidError(f"{where}: key {wire.quote_value(k)} is not {KEY_RULE}")
        if not isinstance(v, str):
            raise InvalidError(f"{where}: the value of {k} is a {type(v).__name__}, not a str")
        if "\0" in v:
            raise InvalidError(f"{where}: the value of {k} contains a NUL character, which "
                               "no environment variable can hold")
        size += len(k) + len(v.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise InvalidError(f"{where}: {size} bytes of keys and values, above the "
                           f"{MAX_BYTES} byte limit")
    return values


def _unquote(raw: str, where: str) -> str:
    s = raw.strip()
    if s[:1] in ("'", '"'):
        q = s[0]
        end = s.find(q, 1)
        while q == '"' and end > 0 and s[end - 1] == "\\":
            end = s.find(q, end + 1)
        if end < 0:
            raise InvalidError(f"{where}: the quoted value has no closing {q}")
        rest = s[end + 1:].strip()
        if rest and not rest.startswith("#"):
            raise InvalidError(f"{where}: unexpected text after the closing {q}")
        body = s[1:end]
        if q == '"':
            body = (body.replace("\\n", "\n").replace("\\t", "\t").replace('\\"', '"')
                    .replace("\\\\", "\\"))
        return body
    # unquoted: a ' #' starts a comment
    cut = re.search(r"\s#", s)
    return (s[:cut.start()] if cut else s).strip()


def parse_dotenv(text: str, source: str = ".env") -> dict[str, str]:
    """The variables of a ``.env`` file: ``KEY=VALUE`` lines (``export`` allowed, values
    quoted with ``'`` or ``"`` or bare, ``#`` comments). A line that is none of these is an
    error naming the file and line (never its value)."""
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        where = f"{source}, line {n}"
        if s.startswith("export "):
            s = s[len("export "):].lstrip()
        key, eq, value = s.partition("=")
        key = key.strip()
        if not eq:
            raise InvalidError(f"{where}: expected KEY=VALUE, found no '='")
        if not _KEY.fullmatch(key):
            raise InvalidError(f"{where}: key {wire.quote_value(key)} is not {KEY_RULE}")
        out[key] = _unquote(value, where)
    return out


def read_dotenv(path: str | os.PathLike[str]) -> dict[str, str]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise InvalidError(f"cannot read the .env file {str(p)!r}: {e.strerror}") from None
    return parse_dotenv(text, str(p))


class Secret:
    """A set of environment variables for a function's containers (see the module
    docstring)."""

    def __init__(self, *, name: str = "", required_keys: Sequence[str] = (),
                 load: Callable[[], dict[str, str]] | None = None, what: str = "") -> None:
        self.name = name
        self.required_keys = list(required_keys)
        self._load = load
        self._what = what or f"Secret.from_name({name!r})"

    def __repr__(self) -> str:
        return f"<burst.Secret {self._what}>"  # never the values

    @classmethod
    def from_name(cls, name: str, *, environment_name: str | None = None,
                  required_keys: Sequence[str] = ()) -> Secret:
        """A stored secret (``burst secret create``), read when a container starts: an
        update reaches containers started after it. A key of ``required_keys`` the secret
        lacks fails the deploy, naming the key."""
        check_name(name)
        if isinstance(required_keys, str) or not all(
                isinstance(k, str) and _KEY.fullmatch(k) for k in required_keys):
            raise InvalidError(f"Secret.from_name({name!r}): required_keys= takes a list of "
                               f"environment variable names, got {required_keys!r}")
        if environment_name is not None:
            raise InvalidError("Secret.from_name(environment_name=): Burst has no "
                               "environments; leave it out")
        return cls(name=name, required_keys=required_keys)

    @classmethod
    def from_dict(cls, env_dict: dict[str, str | None] | None = None) -> Secret:
        """Variables given in code (keys whose value is None are left out, as in Modal)."""
        given = {k: v for k, v in (env_dict or {}).items() if v is not None}
        values = check_values(given, "Secret.from_dict()")
        return cls(load=lambda: dict(values), what="from_dict()")

    @classmethod
    def from_local_environ(cls, env_keys: list[str]) -> Secret:
        """Variables copied from the deploying process's environment when it deploys."""
        if isinstance(env_keys, str) or not all(isinstance(k, str) for k in env_keys):
            raise InvalidError("Secret.from_local_environ() takes a list of variable names, "
                               f"got {env_keys!r}")
        keys = list(env_keys)

        def load() -> dict[str, str]:
            missing = [k for k in keys if k not in os.environ]
            if missing:
                raise InvalidError(f"Secret.from_local_environ(): the local environment has no "
                                   f"variable {', '.join(missing)}")
            return check_values({k: os.environ[k] for k in keys},
                                "Secret.from_local_environ()")

        return cls(load=load, what=f"from_local_environ({keys!r})")

    @classmethod
    def from_dotenv(cls, path: str | os.PathLike[str] | None = None, *,
                    filename: str = ".env") -> Secret:
        """Variables of a ``.env`` file, read when the app deploys: ``path`` is the file or
        its directory; without it, ``filename`` is looked for in the current directory and
        its parents."""

        def load() -> dict[str, str]:
            if path is not None:
                p = Path(path)
                return read_dotenv(p / filename if p.is_dir() else p)
            here = Path.cwd()
            for d in (here, *here.parents):
                if (d / filename).is_file():
                    return read_dotenv(d / filename)
            raise InvalidError(f"Secret.from_dotenv(): no {filename} file in {str(here)!r} or "
                               "its parents")

        return cls(load=load, what=f"from_dotenv({str(path) if path else filename!r})")

    def _spec(self) -> wire.SecretSpec:
        """What the deploy request carries (read now, on the deploying machine)."""
        if self._load is None:
            return wire.SecretSpec(name=self.name, required_keys=list(self.required_keys))
        return wire.SecretSpec(values=self._load())


def coerce(where: str, secrets: object) -> list[Secret]:
    """``secrets=`` as a list of :class:`Secret`, or an error naming what was given."""
    if secrets is None:
        return []
    if isinstance(secrets, Secret) or not isinstance(secrets, (list, tuple)) or not all(
            isinstance(s, Secret) for s in secrets):
        raise InvalidError(f"{where}: secrets= takes a list of burst.Secret, got {secrets!r}")
    return list(secrets)
