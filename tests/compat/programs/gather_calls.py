"""Spawn several calls and collect them with `FunctionCall.gather`."""

import modal

app = modal.App("compat-gather")


@app.function(cpu=0.25)
def cube(x: int) -> int:
    return x**3


@app.local_entrypoint()
def main():
    calls = [cube.spawn(i) for i in range(5)]
    print("ids", len({c.object_id for c in calls}))
    print("gathered", modal.FunctionCall.gather(*calls))
    again = modal.FunctionCall.from_id(calls[2].object_id)
    print("from_id", again.get(timeout=60))
