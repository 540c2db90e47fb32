"""Run by bench/gpu_check.sh on a real GPU: a second GPU function's call while the first
function's container sits idle on the only GPU (kept for scaledown_window=600), each using
the GPU with PyTorch. The call is served only when the scheduler evicts the idle container
(issue 13); prints the times as JSON."""

import json
import time

import burst

app = burst.App("gpu-evict")


def _use_gpu() -> str:
    try:
        import torch
    except ImportError as e:  # a dry run on a machine without PyTorch
        return f"skipped: torch unavailable: {e}"

    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    ok = bool(torch.isfinite((x @ x).float().sum()).item())
    return f"{torch.cuda.get_device_name(0)} ok={ok}"


@app.function(gpu="H200", scaledown_window=600, timeout=300)
def first() -> str:
    return _use_gpu()


@app.function(gpu="H200", scaledown_window=600, timeout=300)
def second() -> str:
    return _use_gpu()


@app.local_entrypoint()
def main() -> None:
    t0 = time.monotonic()
    a = first.remote()
    t1 = time.monotonic()
    a_warm = first.remote()
    t2 = time.monotonic()
    b = second.remote()  # waits for first's idle container to be evicted
    t3 = time.monotonic()
    print(json.dumps({"first_cold_s": round(t1 - t0, 3), "first_warm_s": round(t2 - t1, 3),
                      "second_behind_idle_s": round(t3 - t2, 3),
                      "first": a, "first_warm": a_warm, "second": b}))
