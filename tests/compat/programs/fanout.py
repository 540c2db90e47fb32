"""Fan-out from a container: one remote function maps a worker over its inputs."""

import modal

app = modal.App("compat-fanout")


@app.function(cpu=0.25)
def square(x: int) -> int:
    return x * x


@app.function(cpu=0.25, timeout=120)
def sum_of_squares(n: int) -> int:
    # The map runs from inside this function's container, not from the client.
    return sum(square.map(range(n)))


@app.local_entrypoint()
def main(n: int = 20):
    print("sum of squares", sum_of_squares.remote(n))
