"""A deployed model class; `model_client.py` looks it up with `Cls.from_name`."""

import modal

app = modal.App("compat-model-server")


@app.cls(cpu=0.25)
@modal.concurrent(target_inputs=2)
class Model:
    scale: int = modal.parameter(default=1)

    @modal.enter()
    def load(self):
        self.weights = [self.scale * i for i in range(10)]

    @modal.method()
    def predict(self, i: int) -> int:
        return self.weights[i]

    @modal.batched(max_batch_size=8, wait_ms=50)
    def predict_many(self, xs: list[int]) -> list[int]:
        return [self.weights[x] for x in xs]


@app.local_entrypoint()
def main():
    print("predict", Model(scale=2).predict.remote(4))
    print("batched", list(Model().predict_many.map([1, 2, 3])))
