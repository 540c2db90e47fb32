"""`modal.current_input_id()` names the input being run; `modal.is_local()` tells where."""

import modal

app = modal.App("compat-input-ids")


@app.function(cpu=0.25)
def whoami(i: int) -> tuple[int, str | None, str | None, bool]:
    return i, modal.current_input_id(), modal.current_function_call_id(), modal.is_local()


@app.local_entrypoint()
def main():
    rows = list(whoami.map(range(5)))
    ids = [r[1] for r in rows]
    print("input ids distinct", len(set(ids)) == 5 and all(ids))
    # (In Modal all inputs of one map share a function call id; in Burst each input is a
    # call of its own. Only that there is one is checked here.)
    print("call ids present", all(r[2] for r in rows))
    print("remote is_local", any(r[3] for r in rows))
    print("client", modal.current_input_id(), modal.is_local())
