"""Validation of a function's resource and scaling options, with Modal's defaults and ranges."""

from __future__ import annotations

from typing import Any

from burst import _unsupported
from burst.exception import InvalidError
from burst.wire import GPU_TYPES, Resources

MAX_GPUS = {"A10G": 4}
DEFAULT_MAX_GPUS = 8
#: Modal's other names for the types Burst knows (any case): ``A100`` is Modal's 40 GB
#: A100 (it may upgrade to 80 GB; Burst never does), ``A10`` its A10G, ``H100!`` an H100
#: that is never upgraded and ``B200+`` a B200 or better (Burst places exactly the type).
GPU_ALIASES = {"A100": "A100-40GB", "A10": "A10G", "H100!": "H100", "H100-80GB": "H100",
               "B200+": "B200"}


def _number(name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidError(f"{name}={value!r} is not a number: allowed {lo:g} to {hi:g}")
    if not lo <= value <= hi:
        raise InvalidError(f"{name}={value!r} is out of range: allowed {lo:g} to {hi:g}")
    return float(value)


def parse_gpu(spec: str) -> tuple[str, int]:
    """``"h100:2"`` -> ``("H100", 2)``, naming the known types when the type is unknown."""
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidError(f"gpu={spec!r} is not a GPU spec: use 'TYPE' or 'TYPE:N', "
                           f"TYPE one of {', '.join(GPU_TYPES)}")
    kind, _, count = spec.strip().partition(":")
    canonical = next((t for t in GPU_TYPES if t.lower() == kind.lower()), None)
    if canonical is None:
        canonical = next((t for a, t in GPU_ALIASES.items() if a.lower() == kind.lower()), None)
    if canonical is None:
        raise InvalidError(f"unknown GPU type {kind!r} in gpu={spec!r}: "
                           f"use one of {', '.join(GPU_TYPES)} "
                           f"(or Modal's {', '.join(GPU_ALIASES)})")
    try:
        n = int(count) if count else 1
    except ValueError:
        raise InvalidError(f"invalid GPU count {count!r} in gpu={spec!r}: use TYPE:N") from None
    cap = MAX_GPUS.get(canonical, DEFAULT_MAX_GPUS)
    if not 1 <= n <= cap:
        raise InvalidError(f"gpu={spec!r}: count {n} is out of range: allowed 1 to {cap}")
    return canonical, n


def resources(cpu: Any, memory: Any, gpu: Any) -> tuple[Resources, list[Resources]]:
    """The request and the ordered GPU fallbacks of one function."""
    for name, value in (("cpu", cpu), ("memory", memory)):
        if isinstance(value, tuple):
            raise _unsupported.refuse(
                f"{name}={value!r} (Modal's (request, limit) form: Burst reserves and limits "
                f"one value; use {name}=<number>)")
    cores = _number("cpu", cpu, 0.001, 512)
    mem = int(_number("memory", memory, 1, 4 << 20))
    specs: list[str | None]
    if gpu is None:
        specs = [None]
    elif isinstance(gpu, str):
        specs = [gpu]
    elif isinstance(gpu, list | tuple) and gpu and all(isinstance(g, str) for g in gpu):
        specs = list(gpu)
    else:
        raise InvalidError(f"gpu={gpu!r} is not valid: use None, 'TYPE[:N]' or a list of them "
                           "(fallbacks, tried in order)")
    out = []
    for s in specs:
        if s is None:
            out.append(Resources(cpu=cores, memory_mb=mem))
        else:
            kind, n = parse_gpu(s)
            out.append(Resources(cpu=cores, memory_mb=mem, gpu_type=kind, gpu_count=n))
    return out[0], out[1:]


def timer(name: str, value: Any, lo: float = 1.0, hi: float = 86400.0) -> float:
    return _number(name, value, lo, hi)


def count(name: str, value: Any, lo: int = 0, hi: int = 1_000_000,
          allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidError(f"{name}={value!r} is not an integer: allowed {lo} to {hi}")
    if not lo <= value <= hi:
        raise InvalidError(f"{name}={value!r} is out of range: allowed {lo} to {hi}")
    return value
