"""An ephemeral app lives as long as its client: `with app.run():` in a script that dies."""

import time

import modal

app = modal.App("compat-client-dies")


@app.function(cpu=0.25, timeout=90)
def hold(seconds: float) -> str:
    time.sleep(seconds)
    return "held"


if __name__ == "__main__":
    with app.run():
        call = hold.spawn(80)
        print("spawned", call.object_id, flush=True)
        time.sleep(300)  # the test kills this process here
