from __future__ import annotations

import pytest

import burst
from burst import _bundle
from burst._serialization import rebuild_exception, serialize_exception
from burst.exception import InvalidError, RemoteError

app = burst.App("unit")


@app.function()
def f1(x: int) -> int:
    return x + 1


@app.function(gpu=["h100:2", "a100-80gb"])
def g() -> None: ...


@app.function()
def h() -> int:
    return 1


def test_defaults_are_modals() -> None:
    assert f1.spec.resources.cpu == 0.125 and f1.spec.resources.memory_mb == 128
    assert f1.spec.timeout == 300 and f1.spec.scaledown_window == 60
    assert f1.local(1) == 2 and f1(2) == 3


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"timeout": 0}, "timeout=0 is out of range: allowed 1 to 86400"),
    ({"timeout": 90000}, "timeout=90000 is out of range"),
    ({"scaledown_window": 0.5}, "scaledown_window=0.5 is out of range: allowed 1 to 86400"),
    ({"cpu": -1}, "cpu=-1 is out of range"),
    ({"memory": "lots"}, "memory='lots' is not a number"),
    ({"gpu": "V100"}, "unknown GPU type 'V100'"),
    ({"gpu": "H100:9"}, "count 9 is out of range: allowed 1 to 8"),
    ({"gpu": "A10G:5"}, "allowed 1 to 4"),
    ({"min_containers": 3, "max_containers": 2}, "min_containers=3 is above max_containers=2"),
])
def test_bad_options_name_the_value_and_the_range(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidError, match=message.replace("(", r"\(").replace(")", r"\)")):
        app.function(**kwargs)


def test_gpu_names_are_case_insensitive_with_fallbacks() -> None:
    r = g.spec.resources
    assert (r.gpu_type, r.gpu_count) == ("H100", 2)
    assert [(x.gpu_type, x.gpu_count) for x in g.spec.gpu_fallbacks] == [("A100-80GB", 1)]


def test_nested_functions_are_refused() -> None:
    with pytest.raises(InvalidError, match="must be defined at module level"):
        @app.function()
        def inner() -> None: ...


def test_bad_app_name() -> None:
    with pytest.raises(InvalidError, match="invalid app name 'My App'"):
        burst.App("My App")


def test_remote_outside_a_running_app_is_a_clear_error() -> None:
    with pytest.raises(InvalidError, match="is not running"):
        h.remote()


class Custom(Exception):
    pass


def test_exception_roundtrip_keeps_class_and_traceback() -> None:
    try:
        raise Custom("boom")
    except Custom as e:
        payload, name, msg, trace = serialize_exception(e)
    exc = rebuild_exception(payload, name, msg, trace)
    assert type(exc) is Custom and str(exc) == "boom"
    assert any("raise Custom" in n for n in exc.__notes__)


def test_unrebuildable_exception_becomes_remote_error() -> None:
    exc = rebuild_exception(b"not a pickle", "mod.Gone", "it broke", "Traceback ...")
    assert isinstance(exc, RemoteError) and str(exc) == "mod.Gone: it broke"


def test_bundle_is_deterministic_and_local_only(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "helper.py").write_text("X = 1\n")
    (tmp_path / "main_mod.py").write_text("import json\nfrom pkg import helper\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    importlib.import_module("main_mod")
    b1 = _bundle.build(tmp_path)
    b2 = _bundle.build(tmp_path)
    assert b1.hash == b2.hash and b1.data == b2.data
    assert b1.files == ["main_mod.py", "pkg/__init__.py", "pkg/helper.py"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_retries": -1}, "max_retries=-1 is invalid"),
    ({"max_retries": 1, "backoff_coefficient": 0.5},
     "backoff_coefficient=0.5 is out of range: allowed 1 to 10"),
    ({"max_retries": 1, "initial_delay": 61}, "initial_delay=61 is out of range: allowed 0 to 60"),
    ({"max_retries": 1, "max_delay": 0.5}, "max_delay=0.5 is out of range: allowed 1 to 60"),
])
def test_retries_are_validated_with_the_allowed_range(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidError, match=message):
        burst.Retries(**kwargs)


def test_retry_delays_grow_and_cap() -> None:
    policy = burst.Retries(max_retries=5, backoff_coefficient=3, initial_delay=2,
                           max_delay=20).policy()
    assert [policy.delay(n) for n in range(1, 5)] == [2, 6, 18, 20]
    assert burst.Retries.coerce(2).policy().delay(2) == 1.0  # retries=N: one second apart
    with pytest.raises(InvalidError, match="retries='3' is invalid"):
        burst.Retries.coerce("3")  # type: ignore[arg-type]


def test_concurrent_is_validated() -> None:
    with pytest.raises(InvalidError, match="max_inputs=0 is out of range: allowed 1 to 1000"):
        burst.concurrent(max_inputs=0)
    with pytest.raises(InvalidError, match="target_inputs=9 is out of range"):
        burst.concurrent(max_inputs=8, target_inputs=9)


@app.function()
@burst.concurrent(max_inputs=4, target_inputs=2)
def conc() -> None: ...


def test_concurrent_reaches_the_spec() -> None:
    assert (conc.spec.max_inputs, conc.spec.target_inputs) == (4, 2)


def test_batched_is_validated() -> None:
    with pytest.raises(InvalidError, match="max_batch_size=0 is out of range: allowed 1 to 1000"):
        burst.batched(max_batch_size=0, wait_ms=10)
    with pytest.raises(InvalidError, match="wait_ms=-1 is out of range"):
        burst.batched(max_batch_size=2, wait_ms=-1)
