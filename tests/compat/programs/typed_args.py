"""An entrypoint whose typed parameters become command-line options."""

from typing import Literal

import modal

app = modal.App("compat-typed-args")


@app.function(cpu=0.25)
def describe(count: int, ratio: float, label: str, loud: bool, unit: str) -> str:
    text = f"{label}: {count} x {ratio} = {count * ratio:.2f} {unit}"
    return text.upper() if loud else text


@app.local_entrypoint()
def main(count: int, ratio: float = 0.5, label: str = "total", loud: bool = False,
         unit: Literal["kg", "lb"] = "kg"):
    print("types", type(count).__name__, type(ratio).__name__, type(label).__name__,
          type(loud).__name__)
    print(describe.remote(count, ratio, label, loud, unit))
