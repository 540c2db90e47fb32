"""Issue 20 on a real GPU (bench/gpu_metrics_check.sh): while a gpu="H200" function holds
GPU memory and keeps the GPU busy, /metrics shows the GPU's utilisation and memory from
NVML, and the memory of that function's container."""

import json
import time
import urllib.request

import burst

app = burst.App("gpu-metrics")


@app.function(gpu="H200", timeout=300)
def busy(seconds: float) -> dict:
    import torch

    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    hold = torch.empty(4 << 30, dtype=torch.uint8, device="cuda")  # 4 GiB held
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        x = (x @ x).clamp_(-1, 1)
        n += 1
    torch.cuda.synchronize()
    return {"matmuls": n, "held_bytes": hold.numel()}


def scrape() -> dict:
    from burst.config import load_profile

    p = load_profile()
    req = urllib.request.Request(p.url + "/metrics", headers={"Authorization": f"Bearer {p.token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        text = resp.read().decode()
    from prometheus_client.parser import text_string_to_metric_families

    seen: dict = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith(("burst_gpu_", "burst_container_gpu_")):
                seen[f"{s.name}{json.dumps(s.labels, sort_keys=True)}"] = s.value
    return seen


@app.local_entrypoint()
def main() -> None:
    call = busy.spawn(15.0)
    best: dict = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(1.0)
        for k, v in scrape().items():
            best[k] = max(best.get(k, 0.0), v)
        try:
            result = call.get(timeout=0)
            break
        except TimeoutError:
            continue
    print("RESULT", json.dumps(result))
    print("GPU_METRICS_MAX", json.dumps(best, indent=1))
    util = [v for k, v in best.items() if k.startswith("burst_gpu_utilisation_percent")]
    ctr = [v for k, v in best.items() if k.startswith("burst_container_gpu_memory_used_bytes")]
    print("CHECK gpu_utilisation>0:", bool(util and max(util) > 0),
          "container_gpu_memory>=4GiB:", bool(ctr and max(ctr) >= 4 << 30))
