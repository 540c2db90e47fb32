#!/usr/bin/env bash
# GPU check, run on the lent GPU machine through the device tool after
# bench/gpu_check_prepare.sh here: one run (< 4 minutes) of a local cluster with the process
# runtime, its agent finding the GPU with NVML. Each step prints "== CHECK name: ..." with
# what it found (or why it was skipped); the last line is one JSON summary.
#   1. host NVML and the fresh-process baselines: `import torch; torch.zeros(1, device=
#      "cuda")` in a fresh python3, and CUDA init alone in a process that imported torch;
#   2. placement: bench/gpu_app.py deployed; inside() reports CUDA_VISIBLE_DEVICES and the
#      device from its container; its first call after `burst deploy` returned (cold) and a
#      second (warm) are timed;
#   3. a CUDA out-of-memory error reaches the caller with its class and message;
#   4. bench/gpu_evict_app.py: a second GPU function behind an idle one (evicted);
#   5. GPU seconds in `burst billing report --by resource`;
#   6. after the apps stop: no process and no memory left on the GPU (NVML).
# A dry run on a machine with no GPU: BURST_GPU_CHECK_GPUS=H200:1 declares an inventory
# (torch and NVML absent: those checks say "skipped").
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
R=/tmp/gpu-check && rm -rf "$R" && mkdir -p "$R"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  rm -rf /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target /tmp/site .whl/*.whl || { echo "== CHECK wheels: install failed"; exit 1; }
  SITE=/tmp/site:
else
  SITE=  # a dry run from a venv that has everything
fi
export PYTHONPATH="${SITE}$PWD/libs:$PWD/services/gateway:$PWD/services/scheduler:$PWD/services/billing:$PWD/services/agent"
[ -d .whl/bin ] && export PATH="$PWD/.whl/bin:$PATH"
export BURST_HOME=/tmp/burst-gpu-home PYTHONUNBUFFERED=1
# bench/gpu_app.py's image declares `import torch` (Image.imports()): the zygote imports
# it at `burst deploy`, before it forks (never initialising CUDA). BURST_ZYGOTE_IMPORTS=torch
# would have it imported from `burst up` on instead.
export BURST_GPU_HEALTH_INTERVAL=${BURST_GPU_HEALTH_INTERVAL:-2}
# No bubblewrap there: the zygote forks unsandboxed containers (BURST_ZYGOTE_UNSANDBOXED).
export BURST_ZYGOTE_UNSANDBOXED=${BURST_ZYGOTE_UNSANDBOXED:-1}
rm -rf "$BURST_HOME"
burst() { python3 -m burst.cli.main "$@"; }
python3 -c "import burst, burst_agent, fastapi, uvicorn, nats, redis; print('== CHECK imports: burst and the services import from', burst.__file__)" \
  || { echo "== CHECK imports: FAILED"; exit 1; }

echo "== CHECK baseline"
python3 bench/gpu_probe.py baseline > "$R/baseline.json"; cat "$R/baseline.json"
python3 bench/gpu_probe.py nvml > "$R/nvml_before.json"; cat "$R/nvml_before.json"

up_args=(--timeout 150)
[ -n "${BURST_GPU_CHECK_GPUS:-}" ] && up_args+=(--gpus "$BURST_GPU_CHECK_GPUS")
burst up "${up_args[@]}" || { echo "== CHECK up: FAILED"; tail -n 30 "$BURST_HOME"/logs/*.log; exit 1; }
echo "== CHECK agents"; burst agent list || true

echo "== CHECK deploy + placement + cold/warm + OOM"
burst deploy bench/gpu_app.py > "$R/deploy.log" 2>&1 || { cat "$R/deploy.log"; echo "== CHECK deploy: FAILED"; }
timeout 150 python3 bench/gpu_probe.py calls > "$R/calls.json"; cat "$R/calls.json"

echo "== CHECK eviction (bench/gpu_evict_app.py)"
timeout 120 python3 -m burst.cli.main run bench/gpu_evict_app.py > "$R/evict.out" 2> "$R/evict.err"
echo "{\"rc\": $?}" > "$R/evict_rc.json"; cat "$R/evict.out"; tail -n 5 "$R/evict.err"

echo "== CHECK scale-down"
burst app stop gpu-check || true
timeout 90 python3 bench/gpu_probe.py after > "$R/nvml_after.json"; cat "$R/nvml_after.json"

echo "== CHECK health (NVML: Xid / uncorrectable ECC, memory left behind)"
grep -h -E '"(gpu_unhealthy|gpu_memory_left|nvml_xid_events_unavailable|gpu_health_failed|zygote_imports|zygote_failed|zygote_warmup_failed)"' \
  "$BURST_HOME"/logs/agent.log > "$R/health.log" 2>/dev/null; cat "$R/health.log"
grep -h "pre-import failed" "$BURST_HOME"/logs/agent.log 2>/dev/null | head -3

echo "== CHECK billing"
burst billing report --by resource --format json > "$R/billing.json" 2>&1; cat "$R/billing.json"

[ -n "${OUT:-}" ] && cp -r "$BURST_HOME/logs" "$OUT/" 2>/dev/null
burst down >/dev/null 2>&1
python3 bench/gpu_probe.py summary "$R" "$(( $(date +%s) - T0 ))"
