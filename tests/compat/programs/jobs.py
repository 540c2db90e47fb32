"""A deployed job queue: `burst deploy jobs.py`, then submit and collect from elsewhere."""

import time

import modal

app = modal.App("compat-jobs")


@app.function(cpu=0.25)
def slow_add(a: int, b: int, delay: float = 0.5) -> int:
    time.sleep(delay)
    return a + b
