"""A Dict handle used after its ephemeral block ended."""

import modal

app = modal.App("compat-stale-dict")


@app.function(cpu=0.25)
def total(d: modal.Dict) -> int:
    return sum(d.values())


@app.local_entrypoint()
def main():
    with modal.Dict.ephemeral() as scores:
        scores.update(a=1, b=2)
        print("inside", total.remote(scores))
    scores["c"] = 3  # the dict is gone
