"""A stand-in for ``pynvml`` (NVML) with GPUs the test describes: memory, processes,
uncorrectable ECC counts and Xid events queued for ``nvmlEventSetWait``."""

from __future__ import annotations

import types
from dataclasses import dataclass, field


class NVMLError(Exception):
    pass


@dataclass
class Proc:
    pid: int
    usedGpuMemory: int  # noqa: N815 - NVML's name


@dataclass
class Gpu:
    name: str = "NVIDIA H200"
    total_mib: int = 143771
    ecc_uncorrected: int = 0
    procs: list[Proc] = field(default_factory=list)


@dataclass
class Event:
    device: int
    eventData: int  # noqa: N815 - NVML's name


def make(gpus: list[Gpu]) -> types.ModuleType:
    """A module with NVML's functions over ``gpus``; ``m.xid(index, code)`` queues an Xid."""
    m = types.ModuleType("pynvml")
    queue: list[Event] = []
    m.gpus = gpus  # type: ignore[attr-defined]
    m.NVMLError = NVMLError  # type: ignore[attr-defined]
    m.NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1  # type: ignore[attr-defined]
    m.NVML_VOLATILE_ECC = 0  # type: ignore[attr-defined]
    m.nvmlEventTypeXidCriticalError = 8  # type: ignore[attr-defined]

    def xid(index: int, code: int) -> None:
        queue.append(Event(index, code))

    def wait(_set: object, _timeout_ms: int) -> Event:
        if not queue:
            raise NVMLError("Timeout")
        return queue.pop(0)

    def ecc(h: int, kind: int, counter: int) -> int:
        assert (kind, counter) == (1, 0), (kind, counter)
        return gpus[h].ecc_uncorrected

    mem = types.SimpleNamespace
    m.xid = xid  # type: ignore[attr-defined]
    m.nvmlInit = lambda: None  # type: ignore[attr-defined]
    m.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    m.nvmlDeviceGetCount = lambda: len(gpus)  # type: ignore[attr-defined]
    m.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    m.nvmlDeviceGetIndex = lambda h: h  # type: ignore[attr-defined]
    m.nvmlDeviceGetName = lambda h: gpus[h].name  # type: ignore[attr-defined]
    m.nvmlDeviceGetUUID = lambda h: f"GPU-fake-{h}"  # type: ignore[attr-defined]
    m.nvmlDeviceGetMemoryInfo = lambda h: mem(  # type: ignore[attr-defined]
        total=gpus[h].total_mib << 20,
        used=sum(p.usedGpuMemory for p in gpus[h].procs), free=0)
    m.nvmlDeviceGetUtilizationRates = lambda h: mem(gpu=0, memory=0)  # type: ignore[attr-defined]
    m.nvmlDeviceGetComputeRunningProcesses = lambda h: list(gpus[h].procs)  # type: ignore[attr-defined]
    m.nvmlDeviceGetTotalEccErrors = ecc  # type: ignore[attr-defined]
    m.nvmlEventSetCreate = lambda: object()  # type: ignore[attr-defined]
    m.nvmlDeviceRegisterEvents = lambda h, kind, s: None  # type: ignore[attr-defined]
    m.nvmlEventSetWait = wait  # type: ignore[attr-defined]
    return m
