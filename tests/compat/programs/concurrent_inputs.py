"""`@modal.concurrent`: one container runs several inputs at the same time."""

import os
import time

import modal

app = modal.App("compat-concurrent")


@app.function(cpu=0.25, max_containers=1, timeout=120)
@modal.concurrent(max_inputs=4)
def rendezvous(i: int, seen: modal.Dict) -> tuple[int, int]:
    # Wait until all four inputs are in: only possible when they run at once.
    seen[i] = True
    deadline = time.monotonic() + 60
    while seen.len() < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    return seen.len(), os.getpid()


@app.local_entrypoint()
def main():
    with modal.Dict.ephemeral() as seen:
        results = list(rendezvous.map(range(4), kwargs={"seen": seen}))
    print("all met", all(n == 4 for n, _ in results))
    print("containers", len({pid for _, pid in results}))
