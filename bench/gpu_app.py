"""The function bench/gpu_check.sh runs on a real GPU: what the container sees."""

import importlib.util
import json
import os
import sys
import time

import burst

app = burst.App("gpu-check")
# Modal's way to say what the containers import: the agent's zygote imports torch before
# it forks them (at `burst deploy`), so a first call pays only CUDA's own start.
# (A dry run on a machine without PyTorch declares nothing: the image would not import.)
image = burst.Image.debian_slim()
if importlib.util.find_spec("torch") is not None:
    with image.imports():
        import torch  # noqa: F401


@app.function(gpu="H200", timeout=300, image=image)
def inside() -> dict:
    out = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
           # The zygote imported torch before forking (BURST_ZYGOTE_IMPORTS)?
           "torch_preimported": "torch" in sys.modules}
    try:
        import torch
    except ImportError as e:  # a machine without PyTorch (a dry run on a CPU machine)
        out["torch"] = f"unavailable: {e}"
        return out
    out["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        t = time.monotonic()
        torch.zeros(1, device="cuda")
        torch.cuda.synchronize()
        out["cuda_init_s"] = round(time.monotonic() - t, 3)
        out["device_name"] = torch.cuda.get_device_name(0)
        x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
        out["matmul_ok"] = bool(torch.isfinite((x @ x).float().sum()).item())
    try:
        import pynvml

        pynvml.nvmlInit()
        out["nvml_in_container"] = [
            pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
            for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception as e:  # the container may not see NVML; torch is what matters
        out["nvml_in_container"] = f"unavailable: {e}"
    return out


@app.function(gpu="H200", timeout=120, image=image)
def oom() -> str:
    """Asks for far more GPU memory than any GPU has: torch.OutOfMemoryError, which the
    caller should get with its class and message."""
    try:
        import torch
    except ImportError as e:
        return f"skipped: torch unavailable: {e}"
    if not torch.cuda.is_available():
        return "skipped: no CUDA device"
    x = torch.empty(1 << 45, dtype=torch.uint8, device="cuda")  # 32 TiB
    return f"allocated {x.numel()} bytes"


@app.local_entrypoint()
def main() -> None:
    print(json.dumps(inside.remote(), indent=2))
