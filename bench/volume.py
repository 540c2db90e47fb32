"""Volumes: a 1 GiB file written and committed from a container, then read in fresh
containers on a cold and on a warm agent cache, beside raw nats-py object-store put and
get of the same bytes and a local disk copy.

    .venv/bin/python bench/volume.py [--mib 1024]

A local cluster of its own. Rows (seconds, and MiB/s where bytes move):
- ``commit``: ``vol.commit()`` of the new file in the writing container;
- ``materialise_cold`` / ``read_cold``: a fresh container on a cold agent cache: the
  agent's materialisation (fetch into its cache, then a copy into the container's
  writable directory) and the container's read, from ``open()`` to the last byte;
- ``materialise_warm`` / ``read_warm``: the same in another fresh container, the cache
  warm; ``materialise_warm_read_only``: a read-only mount (hard links);
- ``raw_put`` / ``raw_get``: nats-py's object store put and get of the same bytes (a file
  streamed in and out) in a bucket of its own on the same NATS server;
- ``disk_copy``: ``shutil.copyfile`` of the same file on the local disk.
Prints one JSON object with the rows and the issue's three ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cluster import LocalCluster, load_app  # noqa: E402

APP = """
import os, time

import burst

vol = burst.Volume.from_name("bench-vol", create_if_missing=True)
app = burst.App("volbench")


def _read(path):
    t0 = time.perf_counter()
    n = 0
    with open(path, "rb", buffering=0) as f:
        while piece := f.read(8 << 20):
            n += len(piece)
    return {"read_s": time.perf_counter() - t0, "bytes": n,
            "materialise_s": float(os.environ.get("BURST_VOLUME_MATERIALISE_S", "nan"))}


@app.function(volumes={"/data": vol}, memory=1024, timeout=900)
def write_commit(mib):
    block = os.urandom(1 << 20)
    t0 = time.perf_counter()
    with open("/data/big.bin", "wb") as f:
        for i in range(mib):
            f.write(block[:-4] + i.to_bytes(4, "big"))
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    vol.commit()
    return {"write_s": write_s, "commit_s": time.perf_counter() - t0}


@app.function(volumes={"/data": vol}, memory=256, timeout=900)
def read_cold():
    return _read("/data/big.bin")


@app.function(volumes={"/data": vol}, memory=256, timeout=900)
def read_warm():
    return _read("/data/big.bin")


@app.function(volumes={"/data": vol.read_only()}, memory=256, timeout=900)
def read_warm_ro():
    return _read("/data/big.bin")
"""


def _nats_url(home: Path) -> str:
    state = json.loads((home / "cluster.json").read_text())
    ports = state.get("ports") or {}
    if "nats" in ports:
        return f"nats://127.0.0.1:{ports['nats']}"
    for part in state.get("parts", []):
        if part.get("name") == "nats":
            return f"nats://127.0.0.1:{part['ports']['client']}"
    raise SystemExit("no NATS port in cluster.json")


async def raw_object_store(url: str, src: Path, dst: Path) -> dict[str, float]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        st = await js.create_object_store("bench_raw")
        t0 = time.perf_counter()
        with src.open("rb") as f:
            await st.put("big.bin", f)
        put_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with dst.open("wb") as f:
            await st.get("big.bin", writeinto=f)
        get_s = time.perf_counter() - t0
        await js.delete_object_store("bench_raw")
        return {"raw_put": put_s, "raw_get": get_s}
    finally:
        await nc.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024, help="file size in MiB")
    args = ap.parse_args()
    size = args.mib << 20
    rows: dict[str, float] = {}
    work = Path(tempfile.mkdtemp(prefix="burst-volbench-"))
    try:
        with LocalCluster("burst-volbench-", BURST_VOLUME_MAX_BYTES=str(4 * size)) as c:
            mod = load_app(work, "volbench_app", APP)
            with mod.app.run():
                out = mod.write_commit.remote(args.mib)
                rows["commit"] = out["commit_s"]
                cold = mod.read_cold.remote()
                warm = mod.read_warm.remote()
                warm_ro = mod.read_warm_ro.remote()
            assert cold["bytes"] == warm["bytes"] == size, (cold, warm)
            rows.update(materialise_cold=cold["materialise_s"], read_cold=cold["read_s"],
                        materialise_warm=warm["materialise_s"], read_warm=warm["read_s"],
                        materialise_warm_read_only=warm_ro["materialise_s"],
                        read_warm_read_only=warm_ro["read_s"])
            src, dst = work / "src.bin", work / "dst.bin"
            with src.open("wb") as f:
                block = os.urandom(1 << 20)
                for i in range(args.mib):
                    f.write(block[:-4] + i.to_bytes(4, "big"))
            rows.update(asyncio.run(raw_object_store(_nats_url(c.home), src, dst)))
            dst.unlink()
            t0 = time.perf_counter()
            shutil.copyfile(src, dst)
            rows["disk_copy"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mib = size / (1 << 20)
    speed = {k: round(mib / v, 1) for k, v in rows.items()
             if not k.startswith("materialise") and v > 0}
    cold_total = rows["materialise_cold"] + rows["read_cold"]
    print(json.dumps({
        "mib": args.mib,
        "seconds": {k: round(v, 3) for k, v in rows.items()},
        "mib_per_s": speed,
        "ratios": {
            # Targets: commit >= 0.5x raw put; cold read >= 0.5x raw get; warm read >=
            # 0.8x a local disk copy (higher is better: speed over the baseline's).
            "commit_vs_raw_put": round(rows["raw_put"] / rows["commit"], 2),
            "cold_read_vs_raw_get": round(rows["raw_get"] / cold_total, 2),
            "warm_read_vs_disk_copy": round(rows["disk_copy"] / rows["read_warm"], 2),
        },
    }, indent=2))


if __name__ == "__main__":
    main()
