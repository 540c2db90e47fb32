"""Schedules fire while a script runs its app with `with app.run():`."""

import sys
import time

import modal

app = modal.App("compat-schedule")
ticks = modal.Dict.from_name("compat-schedule-ticks", create_if_missing=True)


@app.function(cpu=0.25, schedule=modal.Period(seconds=1))
def tick():
    ticks[time.time()] = modal.current_input_id()


if __name__ == "__main__":
    want, wait = int(sys.argv[1]), float(sys.argv[2])
    ticks.clear()
    with app.run():
        deadline = time.monotonic() + wait
        while ticks.len() < want and time.monotonic() < deadline:
            time.sleep(0.5)
    print("ticks", ticks.len() >= want)
