"""`@modal.batched`: single calls are handed to the function as lists."""

import modal

app = modal.App("compat-batched")


@app.function(cpu=0.25, max_containers=1)
@modal.batched(max_batch_size=4, wait_ms=100)
def embed(texts: list[str]) -> list[tuple[int, int]]:
    assert isinstance(texts, list), texts
    # Each result says how large the batch it came in was.
    return [(len(t), len(texts)) for t in texts]


@app.local_entrypoint()
def main():
    words = ["a", "bb", "ccc", "dddd", "eeeee", "ffffff", "g", "hh", "iii", "jjjj"]
    results = list(embed.map(words))
    print("lengths", [n for n, _ in results])
    print("largest batch <= 4", max(size for _, size in results) <= 4)
    print("single", embed.remote("hello"))
