"""A class variant asking for a GPU type that does not exist."""

import modal

app = modal.App("compat-bad-gpu")


@app.cls(cpu=0.25)
class Model:
    @modal.method()
    def predict(self, x: float) -> float:
        return 2 * x


FastModel = Model.with_options(gpu="H101")


@app.local_entrypoint()
def main():
    print(FastModel().predict.remote(1.0))
