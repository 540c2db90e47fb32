"""``burst app logs``, ``burst container`` and ``burst shell``: an app's logs over the kept
window (searched, filtered, followed), the running containers (list, logs, stop, exec),
and a shell in a new container of a function."""

from __future__ import annotations

import contextlib
import datetime
import http.client
import json
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from burst._since import HELP as SINCE_HELP
from burst._since import parse_since
from burst.cli.apps import app_cmd
from burst.client import Client, _error_from
from burst.exception import InvalidError, UnavailableError

container_app = typer.Typer(help="Running containers: list, logs, stop, exec.",
                            no_args_is_help=True)
console = Console(highlight=False)


def _stream(client: Client, method: str, path: str, params: dict[str, Any] | None = None,
            body: bytes | None = None, timeout: float | None = None) -> Iterator[bytes]:
    """The lines of a streamed answer (NDJSON or server-sent events)."""
    if params:
        path += "?" + urllib.parse.urlencode({k: v for k, v in params.items()
                                              if v is not None})
    kind = (http.client.HTTPSConnection if client._scheme == "https"
            else http.client.HTTPConnection)
    conn = kind(client._host, client._port, timeout=timeout)
    headers = {"Authorization": f"Bearer {client.token}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
    except OSError as e:
        raise UnavailableError(f"cannot reach the Burst cluster at {client.url} ({e})") from None
    try:
        if resp.status != 200:
            raise _error_from(resp.status, resp.read())
        while raw := resp.readline():
            yield raw
    finally:
        conn.close()


def _since(value: str | None) -> str | None:
    """Checked here first, so a typo is an error before any request."""
    if value is not None:
        try:
            parse_since(value, time.time())
        except ValueError as e:
            raise InvalidError(str(e)) from None
    return value


def format_line(e: dict[str, Any]) -> str:
    at = datetime.datetime.fromtimestamp(float(e["at"]), datetime.UTC)
    stamp = at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"
    call = e.get("call_id") or "-"
    where = f"{e.get('function')} {e.get('container_id')} {call}"
    if e.get("event"):
        return f"{stamp} {where} [{e['event']}] {e.get('line', '')}"
    return f"{stamp} {where} {e.get('line', '')}"


def show(path: str, params: dict[str, Any], follow: bool, as_json: bool) -> None:
    client = Client.from_profile()
    if not follow:
        data = client.get_json(path, params)
        for e in data["lines"]:
            print(json.dumps(e) if as_json else format_line(e), flush=False)
        sys.stdout.flush()
        return
    params = {**params, "follow": "true"}
    event = ""
    for raw in _stream(client, "GET", path, params):
        line = raw.decode(errors="replace").rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "log":
            e = json.loads(line[6:])
            print(json.dumps(e) if as_json else format_line(e), flush=True)


@app_cmd.command("logs")
def app_logs(
    app: str = typer.Argument(..., help="The app's name (its deployment, else its latest "
                              "run) or a run's id."),
    function: str | None = typer.Option(None, "--function", "-f", help="Only this function."),
    call: str | None = typer.Option(None, "--call", help="Only this call (its id)."),
    container: str | None = typer.Option(None, "--container", help="Only this container."),
    since: str | None = typer.Option(None, "--since", help=f"From when: {SINCE_HELP}. "
                                     "Default: 1h."),
    search: str | None = typer.Option(None, "--search", "-s", help="Only lines containing "
                                      "this text (case-insensitive)."),
    limit: int = typer.Option(1000, "--limit", "-n", help="At most this many lines (the "
                              "newest)."),
    follow: bool = typer.Option(False, "--follow", help="Then print new lines as they come "
                                "(Ctrl-C stops)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """The app's output (stdout/stderr per call and container) and platform events
    (container started, ready after a cold start, stopped and why, out of memory,
    timeouts, preemption, image builds), with timestamps."""
    show("/v1/logs", {"app": app, "function": function, "call": call,
                      "container": container, "since": _since(since), "search": search,
                      "limit": limit}, follow, as_json)


@container_app.command("list")
def list_containers(
    app: str | None = typer.Option(None, "--app", help="Only this app's containers."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Running containers: id, function, agent (operator tokens), state, age, inputs
    served, CPU and memory in use, GPUs."""
    data = Client.from_profile().get_json("/v1/containers", {"app": app})
    if as_json:
        print(json.dumps(data, indent=2))
        return
    rows = data["containers"]
    operator = any("agent_id" in c for c in rows)
    table = Table("container", "app", "function", *(["agent"] if operator else []), "state",
                  "age", "inputs", "cpu", "memory", "gpu", title="Containers",
                  title_justify="left")
    for c in rows:
        age = c.get("age")
        cpu, mem = c.get("cpu_used"), c.get("memory_used_mb")
        table.add_row(c["container_id"], c.get("app_name") or c["app"], c["function"],
                      *([c.get("agent_id", "")] if operator else []), c["state"],
                      f"{age:.0f} s" if age is not None else "-", str(c["inputs_served"]),
                      f"{cpu:.2f} cores" if cpu is not None else "-",
                      f"{mem:.0f} MiB" if mem is not None else "-", c.get("gpus") or "-")
    console.print(table)


@container_app.command("logs")
def container_logs(
    container_id: str = typer.Argument(..., help="The container's id (`burst container list`)."),
    since: str | None = typer.Option(None, "--since", help=f"From when: {SINCE_HELP}."),
    search: str | None = typer.Option(None, "--search", "-s"),
    follow: bool = typer.Option(False, "--follow"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """A container's output and platform events."""
    show(f"/v1/containers/{container_id}/logs", {"since": _since(since), "search": search},
         follow, as_json)


@container_app.command("stop")
def stop_container(container_id: str = typer.Argument(..., help="The container's id.")) -> None:
    """Stop a running container; its inputs in progress go to other containers."""
    Client.from_profile().post_json(f"/v1/containers/{container_id}/stop", {})
    console.print(f"[green]Stopping[/green] container [bold]{container_id}[/bold]")


@container_app.command("exec", context_settings={"ignore_unknown_options": True})
def exec_cmd(
    container_id: str = typer.Argument(..., help="The container's id."),
    command: list[str] = typer.Argument(..., help="The command and its arguments (after "
                                        "`--`)."),
    timeout: float = typer.Option(0.0, "--timeout", help="Kill it after this many seconds "
                                  "(0: the agent's BURST_EXEC_TIMEOUT)."),
) -> None:
    """Run a command inside a running container (its files, user, environment and
    network); its output streams here and its exit code is this command's."""
    raise typer.Exit(_exec(Client.from_profile(), container_id, command, timeout))


def _exec(client: Client, container_id: str, command: list[str], timeout: float = 0.0,
          stdin: bool = False) -> int:
    """Run ``command`` in the container, its output here; with ``stdin``, this process's
    stdin goes to it (read in a thread, sent as it comes). Its exit code."""
    body = json.dumps({"command": command, "timeout": timeout, "stdin": stdin}).encode()
    for raw in _stream(client, "POST", f"/v1/containers/{container_id}/exec", body=body):
        frame = json.loads(raw)
        if "exit_code" in frame:
            return int(frame["exit_code"]) if frame["exit_code"] is not None else 255
        if frame.get("stdin"):
            threading.Thread(target=_send_stdin, args=(client, str(frame["exec_id"])),
                             daemon=True).start()
            continue
        out = sys.stderr if frame.get("stream") == "stderr" else sys.stdout
        out.write(frame.get("data", ""))
        out.flush()
    return 255


def _send_stdin(client: Client, exec_id: str) -> None:
    """Forward this process's stdin, a line (or what is there) at a time, then its end."""
    path = f"/v1/execs/{exec_id}/stdin"
    try:
        while chunk := sys.stdin.buffer.readline():
            client.request("POST", path, chunk, "application/octet-stream")
        client.request("POST", path, b"", "application/octet-stream", params={"eof": "true"})
    except Exception as e:  # the session ended meanwhile
        print(f"burst: stdin not sent: {e}", file=sys.stderr)


def shell(
    target: str = typer.Argument(..., metavar="APP::FUNCTION",
                                 help="The function whose image, mounts and secrets the "
                                 "shell's container has."),
    cmd: str = typer.Option("sh", "--cmd", help="The program to run (its stdin is yours)."),
) -> None:
    """An interactive shell in a new container of the function (billed as any
    container; it ends with the shell, or at the function's timeout). Lines you type go to
    the shell's stdin (there is no terminal: no prompt, no line editing); Ctrl-D ends it."""
    app, sep, function = target.partition("::")
    if not sep or not app or not function:
        raise InvalidError(f"invalid target {target!r}: use APP::FUNCTION (e.g. demo::square)")
    client = Client.from_profile()
    started = client.post_json(f"/v1/apps/{app}/functions/{function}/shell", {})
    call_id, container_id = started["call_id"], started["container_id"]
    print(f"burst: shell in container {container_id} of {app}::{function} (Ctrl-D ends it)",
          file=sys.stderr, flush=True)
    code = 255
    try:
        code = _exec(client, container_id, [cmd], stdin=True)
    finally:
        with contextlib.suppress(Exception):  # the session's container stops with it
            client.request("DELETE", f"/v1/calls/{call_id}")
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.add_typer(container_app, name="container")
    app.command("shell")(shell)
