"""Exceptions raised remotely re-raise in the caller with the remote traceback."""

import traceback

import modal

app = modal.App("compat-exceptions")


class InventoryError(Exception):
    pass


def check_stock(item: str) -> None:
    raise InventoryError(f"out of {item}")


@app.function(cpu=0.25)
def order(item: str) -> str:
    check_stock(item)
    return "ok"


@app.local_entrypoint()
def main(uncaught: bool = False):
    try:
        order.remote("widgets")
    except InventoryError as e:
        print("caught", type(e).__name__, e)
        text = "".join(traceback.format_exception(e))
        print("remote frame shown", "check_stock" in text)
    if uncaught:
        order.remote("gadgets")
