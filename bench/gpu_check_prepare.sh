#!/usr/bin/env bash
# Prepare what bench/gpu_check.sh needs on the lent GPU machine (offline, Python 3.12 with
# PyTorch, no Docker, no redis-server): Python 3.12 wheels of Burst's dependencies that its
# image lacks, the nats-server binary, and redis-server with the libraries it links. All go
# to .whl/ (ignored by git through .git/info/exclude), which the device call carries.
#
#   bench/gpu_check_prepare.sh      # here, once
#   then device.run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=420)
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl/bin
PY=${PYTHON:-.venv/bin/python}
# Not in the GPU machine's image (its package list: /work/.library/device/KINDS.md).
pkgs=(msgspec nats-py redis fastapi starlette pydantic pydantic-core annotated-types
      typing-inspection uvicorn structlog croniter pytz cryptography cffi pycparser
      opentelemetry-api httptools uvloop docker tzdata websockets)
# The versions this venv runs (and is tested with), not the index's newest: a newer
# release may need packages the GPU machine lacks (fastapi 0.165 imports opentelemetry).
pinned() { "$PY" -m pip show "$1" 2>/dev/null | awk '/^Version:/{print "=="$2}' || true; }
for p in "${pkgs[@]}"; do
  p="$p$(pinned "$p")"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_34_x86_64 --platform manylinux1_x86_64 -d .whl "$p" \
    || "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl "$p"
done
cp "$(dirname "$(readlink -f "$PY")")/nats-server" .whl/bin/ 2>/dev/null || cp .venv/bin/nats-server .whl/bin/
mkdir -p .whl/redis/lib
cp "$(readlink -f "$(command -v redis-server)")" .whl/redis/redis-server
# Libraries redis-server links besides glibc's own, seen by redis-server alone (a wrapper
# sets LD_LIBRARY_PATH for it only: PyTorch must keep the machine's libstdc++).
ldd "$(command -v redis-server)" | awk '/=> \//{print $3}' \
  | grep -v -E '/(libc|libm|libpthread|libdl|librt|ld-linux)[.-]' \
  | xargs -I{} cp -L {} .whl/redis/lib/
cat > .whl/bin/redis-server <<'SH'
#!/bin/sh
here=$(dirname "$(readlink -f "$0")")/../redis
LD_LIBRARY_PATH="$here/lib" exec "$here/redis-server" "$@"
SH
chmod +x .whl/bin/redis-server
du -sh .whl
