"""A pipeline whose stages call each other from inside their containers."""

import modal

app = modal.App("compat-pipeline")


class StageError(Exception):
    pass


@app.function(cpu=0.25)
def clean(text: str) -> str:
    if not text:
        raise StageError("empty input")
    return text.strip().lower()


@app.function(cpu=0.25)
def count_words(text: str) -> int:
    return len(text.split())


@app.function(cpu=0.25)
def tokens(text: str):
    yield from text.split()


@app.function(cpu=0.25, timeout=120)
def process(docs: list[str]) -> dict:
    cleaned = [clean.remote(d) for d in docs]                 # .remote
    calls = [count_words.spawn(c) for c in cleaned]           # .spawn
    counts = modal.FunctionCall.gather(*calls)                # gather
    pairs = list(count_words.starmap([(c,) for c in cleaned]))  # .starmap
    streamed = list(tokens.remote_gen(cleaned[0]))            # .remote_gen
    try:
        clean.remote("")
        failure = "none"
    except StageError as e:                                   # the callee's exception
        failure = str(e)
    return {"counts": counts, "pairs": pairs, "tokens": streamed, "failure": failure}


@app.local_entrypoint()
def main():
    out = process.remote(["  Hello World ", "A B C", "one"])
    print("counts", out["counts"], out["pairs"])
    print("tokens", out["tokens"])
    print("failure", out["failure"])
