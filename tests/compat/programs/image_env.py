"""An app-wide image with environment variables and a working directory."""

import os

import modal

image = modal.Image.debian_slim(python_version="3.11").env({"GREETING": "bonjour"})
app = modal.App("compat-image-env", image=image)


@app.function(cpu=0.25)
def greet(name: str) -> str:
    return f"{os.environ['GREETING']} {name}"


@app.local_entrypoint()
def main(name: str = "monde"):
    print(greet.remote(name))
