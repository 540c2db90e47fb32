"""A class with parameters, an enter hook, and variants made with `with_options`."""

import time

import modal
from modal.exception import FunctionTimeoutError

app = modal.App("compat-cls-options")


@app.cls(cpu=0.25, timeout=60)
class Greeter:
    greeting: str = modal.parameter(default="hello")
    repeat: int = modal.parameter(default=1)

    @modal.enter()
    def load(self):
        self.prefix = self.greeting.capitalize()

    @modal.method()
    def greet(self, name: str) -> str:
        return ", ".join([f"{self.prefix} {name}"] * self.repeat)

    @modal.method()
    def nap(self, seconds: float) -> str:
        time.sleep(seconds)
        return f"slept {seconds}"


@app.cls(cpu=0.25)
class Scorer:
    @modal.method()
    def score(self, xs: list[int]) -> list[int]:
        return [10 * x for x in xs]


# Variants of the classes, with other resources, limits, concurrency and batching.
QuickGreeter = Greeter.with_options(cpu=0.5, timeout=2)
BusyGreeter = Greeter.with_concurrency(max_inputs=4)
BatchScorer = Scorer.with_batching(max_batch_size=4, wait_ms=50)


@app.local_entrypoint()
def main():
    print("default:", Greeter().greet.remote("Ada"))
    print("params:", Greeter(greeting="hi", repeat=2).greet.remote("Bob"))
    print("variant:", QuickGreeter(greeting="hey").greet.remote("Cy"))
    print("busy:", list(BusyGreeter().greet.map(["a", "b", "c"])))
    print("batched variant:", list(BatchScorer().score.map([1, 2, 3])),
          BatchScorer().score.remote(5))
    print("base nap:", Greeter().nap.remote(0.1))
    try:
        QuickGreeter().nap.remote(30)
    except FunctionTimeoutError as e:
        print("variant timeout:", type(e).__name__)
