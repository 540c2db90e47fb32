"""Scatter-gather: workers take tasks from a Queue and leave results in a Dict."""

import modal

app = modal.App("compat-scatter-gather")


@app.function(cpu=0.25, timeout=120)
def worker(tasks: modal.Queue, results: modal.Dict, worker_id: int) -> int:
    handled = 0
    # None marks the end: one per worker.
    while (item := tasks.get(timeout=60)) is not None:
        results[item] = {"worker": worker_id, "cube": item**3}
        handled += 1
    return handled


@app.local_entrypoint()
def main(items: int = 30, workers: int = 3):
    with modal.Queue.ephemeral() as tasks, modal.Dict.ephemeral() as results:
        tasks.put_many(list(range(items)) + [None] * workers)
        calls = [worker.spawn(tasks, results, w) for w in range(workers)]
        handled = modal.FunctionCall.gather(*calls)
        print("handled", sum(handled))
        print("results", results.len(), sum(v["cube"] for v in results.values()))
        print("all keys", sorted(results.keys()) == list(range(items)))
        print("queue left", tasks.len())
