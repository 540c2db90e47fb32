#!/usr/bin/env bash
# bench/eviction.py on the lent GPU machine, its agent finding the GPU with NVML (the path
# a declared `--gpus` inventory shares): prepare once here with bench/gpu_check_prepare.sh,
# then device.run(command="bash bench/eviction_gpu.sh", carry=[".whl"], timeout_s=300).
# GPU_TYPE (default H200) is the type the functions ask for; SAMPLES (default 5).
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD/libs:$PWD/services/gateway:$PWD/services/scheduler:$PWD/services/billing:$PWD/services/agent"
export PATH="$PWD/.whl/bin:$PATH" PYTHONUNBUFFERED=1
python3 bench/eviction.py --mode gpu --gpus nvml --gpu-type "${GPU_TYPE:-H200}" \
  --samples "${SAMPLES:-5}" | tee "${OUT:-/tmp}/eviction_gpu.json"
