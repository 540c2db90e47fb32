"""A generator function streamed back with `remote_gen`."""

import modal

app = modal.App("compat-generators")


@app.function(cpu=0.25)
def countdown(n: int):
    for i in range(n, 0, -1):
        yield f"{i}..."
    yield "liftoff"


@app.local_entrypoint()
def main():
    print(" ".join(countdown.remote_gen(3)))
    print("items", sum(1 for _ in countdown.remote_gen(50)))
