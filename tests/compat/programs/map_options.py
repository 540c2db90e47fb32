"""`.map` options, `spawn_map`, and calls that are cancelled or not waited out."""

import time

import modal

app = modal.App("compat-map-options")


@app.function(cpu=0.25)
def check(x: int) -> int:
    if x % 3 == 0:
        raise ValueError(f"bad {x}")
    return x


@app.function(cpu=0.25, timeout=60)
def snooze(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


@app.function(cpu=0.25)
def note(key: int, store: modal.Dict) -> None:
    store[key] = key * 10


@app.local_entrypoint()
def main():
    out = list(check.map(range(1, 7), return_exceptions=True))
    print("with errors", [type(r).__name__ if isinstance(r, Exception) else r for r in out])
    print("unordered", sorted(check.map([1, 2, 4, 5], order_outputs=False)))
    with modal.Dict.ephemeral() as store:
        note.spawn_map(range(4), kwargs={"store": store})
        deadline = time.monotonic() + 60
        while store.len() < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        print("spawn_map stored", sorted(store.values()))
    call = snooze.spawn(30)
    try:
        call.get(timeout=0.5)
    except TimeoutError:
        print("not yet")
    call.cancel()
    try:
        call.get(timeout=30)
    except modal.exception.InputCancellation:
        print("cancelled")
