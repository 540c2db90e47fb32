"""The measuring half of bench/gpu_check.sh; each mode prints one JSON object.

    baseline   a fresh python3 running `import torch; torch.zeros(1, device="cuda")`
               (timed from outside), and CUDA init alone in a process that imported torch
    nvml       the host's GPUs as NVML sees them
    calls      bench/gpu_app.py's functions (deployed as gpu-check): cold then warm call of
               inside() timed from the caller, and oom()'s error as the caller sees it
    after      waits (up to 60 s) until NVML shows no process and no memory on any GPU
    summary R S  the one-line JSON summary of the files in R (S: the run's seconds)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FRESH = "import torch; torch.zeros(1, device='cuda')"
INIT_ONLY = ("import time, torch; t = time.monotonic(); torch.zeros(1, device='cuda'); "
             "torch.cuda.synchronize(); print(time.monotonic() - t)")


def baseline() -> dict[str, Any]:
    try:
        import torch  # noqa: F401
    except ImportError as e:
        return {"skipped": f"torch unavailable: {e}"}
    out: dict[str, Any] = {}
    fresh = []
    for _ in range(2):
        t = time.monotonic()
        r = subprocess.run([sys.executable, "-c", FRESH], capture_output=True, text=True)
        if r.returncode != 0:
            return {"skipped": f"CUDA unavailable: {r.stderr.strip()[-300:]}"}
        fresh.append(round(time.monotonic() - t, 3))
    out["fresh_process_s"] = fresh
    r = subprocess.run([sys.executable, "-c", INIT_ONLY], capture_output=True, text=True)
    out["cuda_init_after_import_s"] = round(float(r.stdout.split()[-1]), 3) if r.returncode == 0 \
        else f"failed: {r.stderr.strip()[-300:]}"
    return out


def nvml() -> dict[str, Any]:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as e:
        return {"skipped": f"NVML unavailable: {e!r}"}
    gpus = []
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        try:
            procs = [{"pid": p.pid, "used_mib": (p.usedGpuMemory or 0) >> 20}
                     for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)]
        except Exception as e:
            procs = [{"error": repr(e)}]
        gpus.append({"index": i, "name": pynvml.nvmlDeviceGetName(h),
                     "total_mib": mem.total >> 20, "used_mib": mem.used >> 20,
                     "processes": procs})
    return {"gpus": gpus}


def calls() -> dict[str, Any]:
    import burst

    out: dict[str, Any] = {}
    inside = burst.Function.from_name("gpu-check", "inside")
    for label in ("cold", "warm"):
        t = time.monotonic()
        try:
            res = inside.remote()
            out[f"{label}_s"] = round(time.monotonic() - t, 3)
            out[label] = res
        except Exception as e:
            out[label] = f"failed: {type(e).__name__}: {e}"
    try:
        res = burst.Function.from_name("gpu-check", "oom").remote()
        out["oom"] = {"no_error": res}
    except Exception as e:
        out["oom"] = {"class": type(e).__name__, "message": str(e)[:300]}
    return out


def after() -> dict[str, Any]:
    last = nvml()
    if "skipped" in last:
        return last
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        last = nvml()
        if not any(g["processes"] for g in last["gpus"]):
            break
        time.sleep(2)
    last["held"] = any(g["processes"] for g in last["gpus"])
    return last


def _load(p: Path) -> Any:
    try:
        return json.loads(p.read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError) as e:
        return {"missing": repr(e)}


def summary(r: Path, seconds: str) -> dict[str, Any]:
    base, got = _load(r / "baseline.json"), _load(r / "calls.json")
    aft = _load(r / "nvml_after.json")
    cold = got.get("cold") if isinstance(got.get("cold"), dict) else {}
    s: dict[str, Any] = {"gpu_check": True, "seconds": int(seconds)}
    s["placement"] = {k: cold.get(k) for k in ("CUDA_VISIBLE_DEVICES", "device_name",
                                               "cuda_available", "matmul_ok", "torch")
                      if k in cold} or got.get("cold")
    s["cold_call_s"], s["warm_call_s"] = got.get("cold_s"), got.get("warm_s")
    s["in_container_cuda_init_s"] = cold.get("cuda_init_s")
    s["torch_preimported"] = cold.get("torch_preimported")
    s["baseline"] = base
    init = base.get("cuda_init_after_import_s")
    if isinstance(init, float) and isinstance(s["cold_call_s"], float):
        s["cold_target_s"] = round(init + 0.5, 3)
        s["cold_within_target"] = s["cold_call_s"] <= init + 0.5
    s["oom"] = got.get("oom")
    evict = (r / "evict.out").read_text().strip().splitlines() if (r / "evict.out").exists() else []
    try:
        s["eviction"] = json.loads(evict[-1])
    except (ValueError, IndexError):
        s["eviction"] = {"failed": (r / "evict.err").read_text()[-300:]
                         if (r / "evict.err").exists() else "no output"}
    bill = _load_json(r / "billing.json")
    rows = bill.get("rows", []) if isinstance(bill, dict) else []
    s["gpu_billed"] = [row for row in rows
                      if any(k in str(row.get("resource", "")).lower() for k in ("gpu", "h200"))]
    s["gpu_memory_after_scale_down"] = (
        aft if "skipped" in aft else
        {"held": aft.get("held"), "used_mib": [g["used_mib"] for g in aft.get("gpus", [])],
         "processes": [g["processes"] for g in aft.get("gpus", [])]})
    health = (r / "health.log").read_text().splitlines() if (r / "health.log").exists() else []
    s["agent_log"] = [json.loads(x).get("event") + ": " + json.dumps(
        {k: v for k, v in json.loads(x).items()
         if k not in ("event", "service", "instance", "level", "timestamp")})
        for x in health if x.startswith("{")]
    return s


def _load_json(p: Path) -> Any:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        return {"missing": repr(e)}


def main() -> None:
    mode = sys.argv[1]
    if mode == "summary":
        print(json.dumps(summary(Path(sys.argv[2]), sys.argv[3])))
        return
    print(json.dumps({"baseline": baseline, "nvml": nvml, "calls": calls,
                      "after": after}[mode]()))


if __name__ == "__main__":
    main()
