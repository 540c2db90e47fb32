"""Arguments and results of several megabytes travel to and from a function."""

import hashlib

import modal

app = modal.App("compat-large-values")


@app.function(cpu=0.25, memory=512)
def reverse_blob(data: bytes) -> bytes:
    return data[::-1]


@app.function(cpu=0.25, memory=512)
def make_table(rows: int) -> list[tuple[int, str]]:
    return [(i, f"row-{i}") for i in range(rows)]


@app.local_entrypoint()
def main():
    data = bytes(range(256)) * (3 * 4096)  # 3 MiB
    back = reverse_blob.remote(data)
    same = hashlib.sha256(back[::-1]).digest() == hashlib.sha256(data).digest()
    print("blob", len(back), same)
    table = make_table.remote(200_000)
    print("table", len(table), table[-1])
