"""GPU inventory: discovered with NVML, or declared for machines without GPUs."""

from __future__ import annotations

from dataclasses import dataclass

from burst_core import logs
from burst_core.schemas import GpuInfo

log = logs.get("burst.agent.gpus")

#: Memory (MiB) of a declared GPU, per type, so a declared inventory looks like real cards.
DECLARED_MEMORY_MB = {
    "T4": 15360, "L4": 23034, "A10G": 23028, "L40S": 46068, "A100-40GB": 40960,
    "A100-80GB": 81920, "H100": 81559, "H200": 143771, "B200": 183359,
}


@dataclass
class Inventory:
    gpus: list[GpuInfo]
    declared: bool
    status: str


def parse_declared(spec: str) -> list[GpuInfo]:
    """``"H100:8"`` or ``"A100-80GB:2,T4:1"`` -> GPU records with indices 0..n-1."""
    gpus: list[GpuInfo] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        kind, _, count = part.partition(":")
        canonical = next((k for k in DECLARED_MEMORY_MB if k.lower() == kind.lower()), None)
        if canonical is None:
            known = ", ".join(DECLARED_MEMORY_MB)
            raise ValueError(f"unknown GPU type {kind!r} in {spec!r}: known types are {known}")
        try:
            n = int(count or "1")
        except ValueError:
            raise ValueError(f"invalid GPU count {count!r} in {spec!r}: use TYPE:N") from None
        if not 1 <= n <= 64:
            raise ValueError(f"GPU count {n} in {spec!r} is outside 1..64")
        for _ in range(n):
            i = len(gpus)
            gpus.append(GpuInfo(index=i, type=canonical, memory_mb=DECLARED_MEMORY_MB[canonical],
                                uuid=f"GPU-declared-{i:02d}"))
    return gpus


def _nvml_type(name: str) -> str:
    """Map an NVML product name ("NVIDIA H100 80GB HBM3") to a Burst GPU type."""
    up = name.upper()
    if "A100" in up:
        return "A100-80GB" if "80" in up else "A100-40GB"
    for kind in ("H200", "H100", "B200", "L40S", "A10G", "L4", "T4"):
        if kind in up:
            return kind
    if "A10" in up:
        return "A10G"
    return name


def discover(declared: str = "") -> Inventory:
    if declared:
        gpus = parse_declared(declared)
        return Inventory(gpus, True, f"declared inventory: {declared} (no real devices)")
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as e:
        return Inventory([], False, f"no GPUs: NVML is not available ({type(e).__name__})")
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else name
            uuid = pynvml.nvmlDeviceGetUUID(h)
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            mem = pynvml.nvmlDeviceGetMemoryInfo(h).total // (1 << 20)
            gpus.append(GpuInfo(index=i, type=_nvml_type(name), memory_mb=int(mem), uuid=uuid))
        return Inventory(gpus, False, f"NVML: {len(gpus)} GPU(s)")
    finally:
        pynvml.nvmlShutdown()
