"""A program split over files: the function imports a local package next to it."""

import modal
from textkit import normalize

app = modal.App("compat-multi-file")


@app.function(cpu=0.25)
def clean(text: str) -> str:
    return normalize(text)


@app.local_entrypoint()
def main():
    print("cleaned", repr(clean.remote("  Hello \n  WORLD  ")))
