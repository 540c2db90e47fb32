"""The parts of Modal's SDK surface that programs use, checked without a cluster: module
paths, top-level helpers, names and options not built yet refused by name, class
variants and concurrency marks, ephemeral handles after their block."""

from __future__ import annotations

import importlib
import pickle

import pytest

import burst
from burst.exception import InvalidError


def test_module_paths_and_top_level_names() -> None:
    for mod in ("burst.functions", "burst.dict", "burst.queue", "burst.exception", "burst.app",
                "burst.cls"):
        importlib.import_module(mod)
    from burst.dict import Dict
    from burst.queue import Queue

    assert Dict is burst.Dict and Queue is burst.Queue
    assert burst.Error is burst.exception.Error
    assert burst.is_local() is True
    assert burst.current_input_id() is None and burst.current_function_call_id() is None


@pytest.mark.parametrize("name", ["Sandbox", "Tunnel"])
def test_names_not_built_yet_are_refused_by_name(name: str) -> None:
    with pytest.raises(InvalidError, match=f"burst.{name} is not supported by Burst yet"):
        getattr(burst, name)
    with pytest.raises(AttributeError):
        burst.NoSuchThing  # noqa: B018 - an unknown name stays an AttributeError


def test_app_and_function_options_accepted_or_refused_by_name() -> None:
    app = burst.App("surface", tags={"team": "ml"}, include_source=True, secrets=[])
    assert app.tags == {"team": "ml"}
    with pytest.raises(InvalidError, match=r"takes a list of burst.Secret, got \['token'\]"):
        burst.App("surface", secrets=["token"])
    with pytest.raises(InvalidError, match="unknown option colour=.*Burst takes"):
        burst.App("surface", colour="red")
    with pytest.raises(InvalidError, match="option env= of @app.function"):
        app.function(env={"A": "1"})
    with pytest.raises(InvalidError, match="unknown option bogus="):
        app.function(bogus=1)
    app.function(secrets=[], volumes={}, include_source=True)  # Modal's defaults ask nothing
    with pytest.raises(InvalidError, match=r"app\.include\(\) is not supported"):
        app.include(burst.App("other"))


app = burst.App("surface-cls")


@app.cls(cpu=1)
class Model:
    @burst.batched(max_batch_size=4, wait_ms=10)
    def embed(self, xs: list[int]) -> list[int]:
        return xs

    @burst.concurrent(target_inputs=3)
    def one(self, x: int) -> int:
        return x


Fast = Model.with_options(gpu="H100", memory=2048, retries=2)


def test_batched_and_concurrent_methods_need_no_method_decorator() -> None:
    assert Model.methods == ["embed", "one"]
    assert Model.spec.max_inputs == 4  # the largest batch any method takes


def test_with_options_is_a_variant_deployed_with_the_app() -> None:
    assert Fast.spec.name != Model.spec.name and Fast.spec.name in app.registered_functions
    assert Fast.spec.resources.gpu_type == "H100" and Fast.spec.resources.memory_mb == 2048
    assert Fast.spec.resources.cpu == 1.0 and Fast.spec.is_class
    assert Fast.spec.retries is not None
    assert Model.with_options(gpu="H100", memory=2048, retries=2).spec.name == Fast.spec.name
    with pytest.raises(InvalidError, match="'H101'.*H100"):
        Model.with_options(gpu="H101")
    conc = Model.with_concurrency(max_inputs=10, target_inputs=5)
    assert (conc.spec.max_inputs, conc.spec.target_inputs) == (10, 5)
    with pytest.raises(InvalidError, match="max_inputs=0"):
        Model.with_concurrency(max_inputs=0)
    batched = Model.with_batching(max_batch_size=8, wait_ms=5)
    assert batched._batching == (8, 5) and batched.spec.qualname == f"Model@{batched.spec.name}"
    assert Model.variant(batched.spec.name) is batched
    with pytest.raises(InvalidError, match="wait_ms=-1"):
        Model.with_batching(max_batch_size=8, wait_ms=-1)


def test_concurrent_needs_max_or_target_inputs() -> None:
    with pytest.raises(InvalidError, match="needs max_inputs="):
        burst.concurrent()


def test_handles_pickle_by_name_and_every_method_has_aio() -> None:
    d = burst.Dict.from_name("shared", create_if_missing=True)
    q = burst.Queue.from_name("jobs")
    d2, q2 = pickle.loads(pickle.dumps((d, q)))
    assert (d2.name, d2.create_if_missing, q2.name) == ("shared", True, "jobs")
    for m in ("put", "get", "pop", "contains", "len", "keys", "values", "items", "clear",
              "update"):
        assert callable(getattr(d, m).aio), m
    for m in ("put", "put_many", "get", "get_many", "iterate", "len", "clear"):
        assert callable(getattr(q, m).aio), m
    with pytest.raises(InvalidError, match="n_values=0"):
        q.get_many(0)


def test_gather_takes_function_calls_only() -> None:
    with pytest.raises(InvalidError, match="FunctionCall handles"):
        burst.FunctionCall.gather("fc-1")
