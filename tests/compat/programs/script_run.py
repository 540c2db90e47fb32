"""A plain script: `python script_run.py` runs the app with `with app.run():`."""

import modal

app = modal.App("compat-script")


@app.function(cpu=0.25)
def shout(word: str) -> str:
    return word.upper() + "!"


if __name__ == "__main__":
    with app.run():
        print("shout", shout.remote("hello"))
        print("map", list(shout.map(["a", "b"])))
