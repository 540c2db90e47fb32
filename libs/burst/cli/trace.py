"""``burst trace CALL_ID``: a traced call's spans as a tree, with their timings, from
the traces the cluster keeps (no tracing system needed)."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.tree import Tree

from burst.client import Client

console = Console(highlight=False)


def tree_of(spans: list[dict[str, Any]]) -> list[tuple[dict[str, Any], list[Any]]]:
    """The spans as a forest: ``(span, children)`` pairs, children by start time. A span
    whose parent is not kept (not sent, or expired) is a root."""
    ids = {s["span_id"] for s in spans}
    kids: dict[str, list[dict[str, Any]]] = {}
    roots = []
    for s in sorted(spans, key=lambda s: (s["start"], s["end"])):
        if s.get("parent_id") and s["parent_id"] in ids:
            kids.setdefault(s["parent_id"], []).append(s)
        else:
            roots.append(s)

    def build(s: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        return s, [build(k) for k in kids.get(s["span_id"], [])]

    return [build(r) for r in roots]


def _label(s: dict[str, Any], t0: float) -> str:
    ms = (s["end"] - s["start"]) * 1000
    at = (s["start"] - t0) * 1000
    extra = "  [red]error[/red]" if s.get("status") == "error" else ""
    return (f"[bold]{s['name']}[/bold] [dim]({s['service']})[/dim]  {ms:.1f} ms"
            f"  [dim]+{at:.1f} ms[/dim]{extra}")


def trace(call_id: str = typer.Argument(..., help="The call's id (fc-...)."),
          as_json: bool = typer.Option(False, "--json", help="Print the spans as JSON.")
          ) -> None:
    """Print a traced call's span tree with timings (calls are traced when sampled,
    `BURST_TRACE_SAMPLE`, or asked for: `burst run --trace`, the `X-Burst-Trace: 1` header)."""
    data = Client.from_profile().get_json(f"/v1/calls/{call_id}/trace")
    if as_json:
        print(json.dumps(data, indent=2))
        return
    spans = data["spans"]
    t0 = min(s["start"] for s in spans)
    top = Tree(f"Trace of {call_id} ({len(spans)} spans)")

    def add(node: Tree, item: tuple[dict[str, Any], list[Any]]) -> None:
        branch = node.add(_label(item[0], t0))
        for child in item[1]:
            add(branch, child)

    for root in tree_of(spans):
        add(top, root)
    console.print(top)


def register(app: typer.Typer) -> None:
    app.command("trace")(trace)
