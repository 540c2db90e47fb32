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


# Variants of the class, with other resources and limits.
QuickGreeter = Greeter.with_options(cpu=0.5, timeout=2)
BusyGreeter = Greeter.with_concurrency(max_inputs=4)


@app.local_entrypoint()
def main():
    print("default:", Greeter().greet.remote("Ada"))
    print("params:", Greeter(greeting="hi", repeat=2).greet.remote("Bob"))
    print("variant:", QuickGreeter(greeting="hey").greet.remote("Cy"))
    print("busy:", list(BusyGreeter().greet.map(["a", "b", "c"])))
    print("base nap:", Greeter().nap.remote(0.1))
    try:
        QuickGreeter().nap.remote(30)
    except FunctionTimeoutError as e:
        print("variant timeout:", type(e).__name__)
