"""Two apps in one file: `burst run` needs `::APP` to know which one."""

import modal

frontend = modal.App("compat-frontend")
backend = modal.App("compat-backend")


@frontend.function(cpu=0.25)
def page(path: str) -> str:
    return f"<h1>{path}</h1>"


@backend.function(cpu=0.25)
def query(sql: str) -> int:
    return len(sql)


@frontend.local_entrypoint()
def render():
    print("page", page.remote("/home"))


@backend.local_entrypoint()
def count():
    print("query", query.remote("select 1"))
