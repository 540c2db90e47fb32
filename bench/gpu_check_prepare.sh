#!/usr/bin/env bash
# Prepare what bench/gpu_check.sh needs on the lent GPU machine (offline, Python 3.12 with
# PyTorch, no Docker, no bwrap, no redis-server): Python 3.12 wheels of every runtime
# dependency of Burst at the versions this venv runs (bench/gpu_closure.py), the
# nats-server binary, and redis-server with the libraries it links. All go to .whl/
# (ignored by git through the repository's info/exclude), which the device call carries.
#
#   bench/gpu_check_prepare.sh      # here, once
#   then device.run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=420)
set -euo pipefail
cd "$(dirname "$0")/.."
excl="$(git rev-parse --git-common-dir)/info/exclude"; mkdir -p "$(dirname "$excl")"
grep -qx "/.whl/" "$excl" 2>/dev/null || echo "/.whl/" >> "$excl"
rm -rf .whl && mkdir -p .whl/bin
PY=${PYTHON:-.venv/bin/python}
# The GPU machine's Python (3.12 there); PYVER=3.11 for a dry run with this machine's 3.11.
PYVER=${PYVER:-3.12}
# Every runtime dependency of Burst (its server extra, walked through each distribution's
# own requirements) at the version this venv runs and is tested with, not the index's
# newest: a newer release may need packages the GPU machine lacks. All of them go to the
# GPU machine (installed ahead of its own packages), so nothing depends on what its image
# happens to hold.
"$PY" bench/gpu_closure.py --python-version "$PYVER" > .whl/requirements.txt
plat=()
for p in manylinux_2_34_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 linux_x86_64; do
  plat+=(--platform "$p")
done
missing=()
while read -r req; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp "${plat[@]}" -d .whl "$req" 2>/dev/null \
    || "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
       -d .whl "$req" 2>/dev/null \
    || missing+=("$req")
done < .whl/requirements.txt
if [ ${#missing[@]} -gt 0 ]; then
  echo "gpu_check_prepare: no Python $PYVER wheel of: ${missing[*]}" >&2
  exit 1
fi
# Each pinned distribution has exactly its wheel (a check that the download matched).
"$PY" - "$PYVER" <<'CHECK'
import pathlib, re, sys
canon = lambda n: re.sub(r"[-_.]+", "-", n).lower()
have = {}
for w in pathlib.Path(".whl").glob("*.whl"):
    name, version = w.name.split("-")[:2]
    have[canon(name)] = version
bad = []
for line in pathlib.Path(".whl/requirements.txt").read_text().split():
    name, version = line.split("==")
    if have.get(canon(name)) != version:
        bad.append(f"{line} (have {have.get(canon(name))})")
if bad:
    sys.exit("gpu_check_prepare: wheels do not match the pins: " + ", ".join(bad))
print(f"gpu_check_prepare: {len(have)} wheels for Python {sys.argv[1]}, each at the venv's version")
CHECK
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
