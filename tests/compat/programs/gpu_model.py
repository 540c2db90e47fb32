"""A model class on a GPU, written with Modal's GPU names, and a CPU fallback path."""

import os

import modal

app = modal.App("compat-gpu-model")


@app.cls(gpu="A100", cpu=0.25)
class Embedder:
    @modal.enter()
    def load(self):
        self.device = "cuda:" + os.environ.get("CUDA_VISIBLE_DEVICES", "?")

    @modal.method()
    def embed(self, text: str) -> tuple[str, int]:
        return self.device, len(text)


@app.function(gpu=["H100!", "a10"], cpu=0.25)
def which_gpu() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "none")


@app.local_entrypoint()
def main():
    device, n = Embedder().embed.remote("hello")
    print("embedded", n, device.startswith("cuda:"))
    print("fallback ran", which_gpu.remote() != "none")
