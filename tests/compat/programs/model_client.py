"""Call the deployed `compat-model-server` app's class from another process."""

import modal

Model = modal.Cls.from_name("compat-model-server", "Model")
print("predict", Model(scale=3).predict.remote(4))
print("batched", list(Model().predict_many.map([1, 2, 3])))
square = modal.Function.from_name("compat-model-server", "nothing-here")
try:
    square.remote(1)
except modal.exception.NotFoundError as e:
    print("missing", "nothing-here" in str(e))
