"""`.starmap` over argument tuples and `.for_each` for side effects."""

import modal

app = modal.App("compat-starmap")


@app.function(cpu=0.25)
def power(base: int, exp: int) -> int:
    return base**exp


@app.function(cpu=0.25)
def remember(key: str, store: modal.Dict) -> None:
    store[key] = key.upper()


@app.local_entrypoint()
def main():
    print("starmap", list(power.starmap([(2, 3), (3, 2), (10, 0)])))
    print("kwargs", list(power.map([2, 5], kwargs={"exp": 2})))
    with modal.Dict.ephemeral() as store:
        result = remember.for_each(["a", "b", "c"], kwargs={"store": store})
        print("for_each returned", result)
        print("stored", sorted(store.items()))
