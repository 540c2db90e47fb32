"""burst.Secret: constructors, bad input named, values read at deploy (never at import),
and the order secrets reach a function's spec."""

from __future__ import annotations

from pathlib import Path

import pytest

import burst
from burst import secret as secret_mod
from burst.app import _with_secrets
from burst.exception import InvalidError


def test_bad_names_and_keys_are_refused_by_name() -> None:
    with pytest.raises(InvalidError, match=r"invalid secret name 'a\.b'"):
        burst.Secret.from_name("a.b")
    with pytest.raises(InvalidError, match="required_keys= takes a list of environment"):
        burst.Secret.from_name("ok", required_keys=["1BAD"])
    with pytest.raises(InvalidError, match=r"key '2FA' is not an environment variable name"):
        burst.Secret.from_dict({"2FA": "x"})
    with pytest.raises(InvalidError, match="the value of A is a int"):
        burst.Secret.from_dict({"A": 1})  # type: ignore[dict-item]
    with pytest.raises(InvalidError, match="secrets= takes a list of burst.Secret"):
        burst.App("x", secrets=burst.Secret.from_dict({}))  # type: ignore[arg-type]


def test_dotenv_parsing_and_syntax_errors(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("# comment\nexport A=1\nB='two words' # c\nC=\"line\\nbreak\"\nD=bare # c\n\n")
    assert secret_mod.read_dotenv(env) == {"A": "1", "B": "two words", "C": "line\nbreak",
                                           "D": "bare"}
    env.write_text("A=1\nTHIS LINE IS WRONG-value-hidden\n")
    with pytest.raises(InvalidError, match=r"\.env, line 2: expected KEY=VALUE") as e:
        secret_mod.read_dotenv(env)
    assert "value-hidden" not in str(e.value)
    env.write_text('A="unterminated-value\n')
    with pytest.raises(InvalidError, match=r"line 1: the quoted value has no closing \"") as e:
        secret_mod.read_dotenv(env)
    assert "unterminated-value" not in str(e.value)


def fn_with_secrets() -> None: ...


def test_values_are_read_at_deploy_in_order(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("FROM_FILE=f\nSHARED=file\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BURST_TEST_LOCAL", raising=False)
    local = burst.Secret.from_local_environ(["BURST_TEST_LOCAL"])  # not read yet: no error
    app = burst.App("sec", secrets=[burst.Secret.from_name("stored", required_keys=["K"])])

    f = app.function(secrets=[
        burst.Secret.from_dotenv(), local,
        burst.Secret.from_dict({"SHARED": "dict-value", "NONE": None})])(fn_with_secrets)

    with pytest.raises(InvalidError, match="local environment has no variable BURST_TEST_LOCAL"):
        _with_secrets(f)
    monkeypatch.setenv("BURST_TEST_LOCAL", "here")
    spec = _with_secrets(f)
    assert [(s.name, s.required_keys, s.values) for s in spec.secrets] == [
        ("stored", ["K"], {}), ("", [], {"FROM_FILE": "f", "SHARED": "file"}),
        ("", [], {"BURST_TEST_LOCAL": "here"}), ("", [], {"SHARED": "dict-value"})]
    assert f.spec.secrets == []  # the client's own spec keeps no values
    assert "here" not in repr(local) and "dict-value" not in repr(f.secrets[-1])
