"""A flaky function that succeeds on its third attempt thanks to `modal.Retries`."""

import modal

app = modal.App("compat-retries")


@app.function(cpu=0.25, retries=modal.Retries(max_retries=3, initial_delay=0.1,
                                              backoff_coefficient=1.0))
def flaky(attempts: modal.Dict) -> str:
    n = attempts.get("n", 0) + 1
    attempts["n"] = n
    if n < 3:
        raise RuntimeError(f"attempt {n} failed")
    return f"succeeded on attempt {n}"


@app.function(cpu=0.25, retries=1)
def always_fails() -> None:
    raise ValueError("never works")


@app.local_entrypoint()
def main():
    with modal.Dict.ephemeral() as attempts:
        print(flaky.remote(attempts))
    try:
        always_fails.remote()
    except ValueError as e:
        print("gave up:", e)
