"""`burst serve`: seconds from saving an edit to the first request answered by the new code.

    .venv/bin/python bench/serve.py [--edits 10]

A local cluster of its own; `burst serve` of a FastAPI endpoint that returns its version;
each edit rewrites the file with the next version, and the endpoint is polled (every
10 ms) until it answers with it. Prints one JSON object. Issue 16's target: within 2 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cluster import BURST, LocalCluster  # noqa: E402

APP = """
import burst

app = burst.App("servebench")

@app.function(cpu=0.25)
@burst.fastapi_endpoint()
def version() -> dict:
    return {{"version": {version}}}
"""


def serve_url(proc: subprocess.Popen[str], timeout: float = 120.0) -> str:
    """The endpoint's URL, from `burst serve`'s output."""
    found: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "web endpoint version:" in line and not found:
                found.append(line.split(": ", 1)[1].strip())

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not found:
        if time.monotonic() > deadline or proc.poll() is not None:
            sys.exit("burst serve printed no URL")
        time.sleep(0.05)
    return found[0]


def wait_version(client: httpx.Client, url: str, version: int, timeout: float = 60.0) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            r = client.get(url, timeout=10)
            if r.status_code == 200 and r.json().get("version") == version:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.01)
    sys.exit(f"version {version} not served within {timeout} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edits", type=int, default=10)
    args = ap.parse_args()
    if args.edits < 1:
        ap.error("--edits must be at least 1")
    with LocalCluster("burst-bench-serve-") as c:
        src = c.home / "servebench.py"
        src.write_text(textwrap.dedent(APP.format(version=0)))
        proc = subprocess.Popen([*BURST, "serve", str(src)], env=c.env, text=True,
                                stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        try:
            url = serve_url(proc)
            with httpx.Client() as client:
                first = wait_version(client, url, 0)
                seconds = []
                for v in range(1, args.edits + 1):
                    src.write_text(textwrap.dedent(APP.format(version=v)))
                    seconds.append(wait_version(client, url, v))
        finally:
            proc.send_signal(2)  # Ctrl-C: removes the run
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(json.dumps({
        "benchmark": "serve",
        "first_answer_s": round(first, 3),
        "edit_to_new_code_s": {
            "p50": round(statistics.median(seconds), 3), "max": round(max(seconds), 3),
            "all": [round(s, 3) for s in seconds]},
        "target": {"edit_to_new_code_s": "< 2"},
    }, indent=2))


if __name__ == "__main__":
    main()
