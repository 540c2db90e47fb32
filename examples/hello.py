"""The hello-world of Burst: local and remote calls, and output from a container.

    burst run examples/hello.py
"""

import os

import burst

app = burst.App("hello")


@app.function(scaledown_window=10)
def square(x: int) -> int:
    print(f"squaring {x} in process {os.getpid()}")
    return x * x


@app.local_entrypoint()
def main() -> None:
    print("local:", square.local(3))
    print("remote:", square.remote(4))
    results = [square.remote(i) for i in range(5)]
    print("loop of remote calls:", results)
