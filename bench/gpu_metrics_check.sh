#!/usr/bin/env bash
# Issue 20's device check, on the lent GPU machine (wheels as bench/gpu_check_prepare.sh
# makes them, in $WHL): /metrics with a real GPU (NVML utilisation and memory, and a
# container's GPU memory) while bench/gpu_metrics_app.py keeps an H200 busy; then the
# observability on/off pairs (bench/_obs_cost.py) of bench/invoke.py and bench/map.py on
# that quieter 16-core machine.
#   device.run(command="WHL=$PWD/.whl bash bench/gpu_metrics_check.sh", carry=[".whl"])
set -uo pipefail
cd "$(dirname "$0")/.."
WHL=${WHL:-.whl}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site "$WHL"/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD/libs:$PWD/services/gateway:$PWD/services/scheduler:$PWD/services/billing:$PWD/services/agent"
export PATH="$WHL/bin:$PATH"
export BURST_HOME=/tmp/burst-gpu-home PYTHONUNBUFFERED=1 BURST_METRICS_INTERVAL=1
rm -rf "$BURST_HOME"
burst() { python3 -m burst.cli.main "$@"; }
burst up --timeout 150 || { tail -n 30 "$BURST_HOME"/logs/*.log; exit 1; }
burst run bench/gpu_metrics_app.py
rc=$?
burst container list || true
burst down
unset BURST_HOME BURST_METRICS_INTERVAL
python3 bench/invoke.py --obs-only --obs-pairs 20 --obs-size 400 \
  | tee "${OUT:-/tmp}/invoke_obs.json" || rc=1
python3 bench/map.py --obs-only --obs-pairs 20 --obs-size 5000 \
  | tee "${OUT:-/tmp}/map_obs.json" || rc=1
exit $rc
