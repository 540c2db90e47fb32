#!/usr/bin/env bash
# GPU check, run on the lent GPU machine through the device tool (see
# bench/gpu_check_prepare.sh): a local cluster with the process runtime, its agent finding
# the GPU with NVML, and a function with gpu="H200" reporting, from inside its container,
# torch.cuda.get_device_name() and CUDA_VISIBLE_DEVICES, beside the GPU NVML shows the agent;
# then bench/gpu_evict_app.py: a second GPU function's call behind the first one's idle container.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD/libs:$PWD/services/gateway:$PWD/services/scheduler:$PWD/services/billing:$PWD/services/agent"
export PATH="$PWD/.whl/bin:$PATH"
export BURST_HOME=/tmp/burst-gpu-home PYTHONUNBUFFERED=1
rm -rf "$BURST_HOME"
burst() { python3 -m burst.cli.main "$@"; }
python3 - <<'PY'
import pynvml
pynvml.nvmlInit()
for i in range(pynvml.nvmlDeviceGetCount()):
    h = pynvml.nvmlDeviceGetHandleByIndex(i)
    print(f"host NVML: GPU {i}: {pynvml.nvmlDeviceGetName(h)}, "
          f"{pynvml.nvmlDeviceGetMemoryInfo(h).total >> 20} MiB")
PY
burst up --timeout 150 || { tail -n 30 "$BURST_HOME"/logs/*.log; exit 1; }
burst agent list || true
burst run bench/gpu_app.py
rc=$?
# Issue 13: a second GPU function behind the first one's idle container (evicted).
burst run bench/gpu_evict_app.py || rc=1
[ -n "${OUT:-}" ] && cp -r "$BURST_HOME/logs" "$OUT/" 2>/dev/null
burst down
exit $rc
