"""GPU specs and resource options as Modal programs write them."""

from __future__ import annotations

import pytest

from burst._resources import parse_gpu, resources
from burst.exception import InvalidError


@pytest.mark.parametrize(("spec", "parsed"), [
    ("A100", ("A100-40GB", 1)), ("a100:2", ("A100-40GB", 2)), ("A10", ("A10G", 1)),
    ("a10g", ("A10G", 1)), ("H100!", ("H100", 1)), ("h100!:8", ("H100", 8)),
    ("B200+", ("B200", 1)), ("A100-80GB:4", ("A100-80GB", 4)), ("l40s", ("L40S", 1)),
])
def test_modal_gpu_names_are_understood(spec: str, parsed: tuple[str, int]) -> None:
    assert parse_gpu(spec) == parsed


def test_fallback_lists_take_modal_names() -> None:
    first, rest = resources(1.0, 512, ["H100!", "A100"])
    assert (first.gpu_type, [r.gpu_type for r in rest]) == ("H100", ["A100-40GB"])


@pytest.mark.parametrize(("spec", "words"), [
    ("H101", ["'H101'", "H100", "A100"]),
    ("A10:5", ["count 5", "allowed 1 to 4"]),
    ("RTX-PRO-7000", ["'RTX-PRO-7000'"]),
])
def test_unknown_gpus_are_named(spec: str, words: list[str]) -> None:
    with pytest.raises(InvalidError) as e:
        parse_gpu(spec)
    for w in words:
        assert w in str(e.value), str(e.value)


@pytest.mark.parametrize(("cpu", "memory", "named"), [((0.25, 1.0), 512, "cpu=(0.25, 1.0)"),
                                                      (1.0, (256, 512), "memory=(256, 512)")])
def test_request_limit_tuples_are_named(cpu: object, memory: object, named: str) -> None:
    from burst._unsupported import NotSupportedError

    with pytest.raises(NotSupportedError, match=r"\(request, limit\)") as e:
        resources(cpu, memory, None)
    assert named in str(e.value)
