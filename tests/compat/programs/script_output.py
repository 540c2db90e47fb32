"""`modal.enable_output()` shows what remote functions print while a script runs them."""

import modal

app = modal.App("compat-script-output")


@app.function(cpu=0.25)
def work(n: int) -> int:
    print(f"working on {n}", flush=True)
    return n + 1


if __name__ == "__main__":
    with modal.enable_output():
        with app.run():
            print("result", work.remote(41), flush=True)
