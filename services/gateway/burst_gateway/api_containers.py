"""Containers: the running ones (``burst container list``), their logs, stopping one,
and running a command inside one (``burst container exec``).

What a token sees: a workspace token its own workspace's containers (without the agent
they run on); an operator token every workspace's, with their agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from burst._since import HELP as SINCE_HELP
from burst.exception import ConflictError, InvalidError, NotFoundError, UnavailableError
from burst.wire import is_app_id
from burst_core import bus, calls, names
from burst_core.schemas import (
    AgentHeartbeatDecoder,
    ContainerView,
    ExecAcceptedDecoder,
    ExecInput,
    ExecOutputDecoder,
    ExecRequest,
    LogLineDecoder,
    StopContainer,
    encode,
)
from burst_gateway import api_logs
from burst_gateway.auth import Principal, is_operator, principal, require_exec
from burst_gateway.state import Gateway, GatewayDep

router = APIRouter()


async def running(gw: Gateway) -> list[tuple[str, ContainerView]]:
    """Every container the agents report, with its agent's id."""
    out: list[tuple[str, ContainerView]] = []
    for agent_id, raw in (await bus.kv_items(gw.js, names.KV_HEARTBEATS)).items():
        with contextlib.suppress(msgspec.DecodeError):
            out += [(agent_id, v) for v in AgentHeartbeatDecoder.decode(raw).containers]
    return out


async def find_container(gw: Gateway, container_id: str, workspace: str | None,
                         ) -> tuple[str, ContainerView] | None:
    """The running container ``container_id`` (of ``workspace``; None: of any) and its
    agent, or None."""
    for agent_id, v in await running(gw):
        if v.container_id == container_id and (
                workspace is None or v.fn_key.startswith(workspace + ".")):
            return agent_id, v
    return None


def _gpus(v: ContainerView) -> str:
    if not v.gpu_indices:
        return ""
    return f"{v.gpu_type or 'GPU'}:{len(v.gpu_indices)}"


def view(agent_id: str, v: ContainerView, operator: bool, now: float,
         names_of: dict[str, str]) -> dict[str, Any]:
    ws, app, fn = names.split_function_key(v.fn_key)
    return {
        "container_id": v.container_id, "workspace": ws, "app": app,
        "app_name": names_of.get(app, app), "function": fn,
        **({"agent_id": agent_id} if operator else {}),
        "state": v.state, "started_at": v.started_at or None,
        "age": round(now - v.started_at, 1) if v.started_at else None,
        "inputs_served": v.inputs_served, "in_flight": v.in_flight,
        "cpu_used": v.cpu_used, "memory_used_mb": v.memory_used_mb,
        "gpus": _gpus(v), "gpu_indices": list(v.gpu_indices),
    }


@router.get("/v1/containers", tags=["containers"])
async def list_containers(gw: GatewayDep, app: str | None = Query(
        None, description="Only this app's (its name, or a run's id)."),
        p: Principal = Depends(principal)) -> dict[str, Any]:
    """Running containers: id, app, function, state, age, inputs served, CPU and memory
    in use, GPUs. A workspace token sees its own; an operator token every workspace's,
    with the agent each runs on."""
    operator = is_operator(p)
    deps = gw.deployments_of(p.workspace)
    names_of = {d.app: d.name or d.app for d in deps}
    apps: set[str] | None = None
    if app is not None:
        try:
            names.check_ident("app", app)
        except ValueError as e:
            raise InvalidError(str(e)) from None
        apps = {d.app for d in deps if d.app == app or (d.name == app and d.ephemeral)}
        if not apps and not is_app_id(app) and await gw.deployment(p.workspace, app) is None:
            raise NotFoundError(f"app {app!r} is not deployed in workspace {p.workspace!r} and "
                                "has no live run (see `burst app list`)")
        apps.add(app)
    now = time.time()
    out = []
    for agent_id, v in await running(gw):
        ws, app_id, _ = names.split_function_key(v.fn_key)
        if apps is not None and (ws != p.workspace or app_id not in apps):
            continue
        if ws != p.workspace and not operator:
            continue
        out.append(view(agent_id, v, operator, now, names_of))
    out.sort(key=lambda c: (c["workspace"], c["app"], c["function"], c["container_id"]))
    return {"containers": out}


async def _owned(gw: Gateway, container_id: str, p: Principal,
                 ) -> tuple[str, ContainerView]:
    api_logs.check_id("container", container_id)
    found = await find_container(gw, container_id, None if is_operator(p) else p.workspace)
    if found is None:
        raise NotFoundError(f"container {container_id!r} is not running in workspace "
                            f"{p.workspace!r} (it stopped, or never was: see `burst container "
                            "list`)")
    return found


@router.post("/v1/containers/{container_id}/stop", tags=["containers"], status_code=202)
async def stop_container(container_id: str, gw: GatewayDep,
                         p: Principal = Depends(principal)) -> dict[str, Any]:
    """Stop a running container: its inputs in progress go to other containers at once,
    and the scheduler starts new ones if the function needs them."""
    agent_id, v = await _owned(gw, container_id, p)
    order = StopContainer(container_id=container_id, agent_id=agent_id, reason="stopped")
    await bus.publish(gw.js, names.agent_orders_subject(agent_id), encode(order),
                      msg_id=f"stop-{container_id}")
    return {"container_id": container_id, "stopping": True}


@router.get("/v1/containers/{container_id}/logs", tags=["containers"])
async def container_logs(
    container_id: str, request: Request, gw: GatewayDep,
    since: str | None = Query(None, description=f"From when: {SINCE_HELP}."),
    search: str | None = Query(None), limit: int = Query(1000, ge=1),
    follow: bool = Query(False), p: Principal = Depends(principal),
) -> Any:
    """A container's output and events (as ``GET /v1/logs?container=``)."""
    if limit > gw.settings.log_lines_max:
        raise InvalidError(f"limit={limit} is above the {gw.settings.log_lines_max} lines one "
                           "read returns (BURST_LOG_LINES_MAX)")
    q = await api_logs.resolve(gw, p.workspace, None, None, None, container_id, since, search,
                               gw.settings.log_default_since)
    return await api_logs.logs_response(gw, q, request, limit, follow)


class ExecBody(msgspec.Struct):
    command: list[str]
    timeout: float = 0.0
    #: Its stdin comes through ``POST /v1/execs/{exec_id}/stdin`` (``burst shell``).
    stdin: bool = False


@router.post("/v1/containers/{container_id}/exec", tags=["containers"])
async def exec_in_container(
    container_id: str, request: Request, gw: GatewayDep,
    p: Principal = Depends(principal),
) -> StreamingResponse:
    """Run a command inside a running container (its filesystem, namespaces, user and
    environment): NDJSON lines ``{"stream": "stdout"|"stderr", "data": ...}`` as it
    writes, then ``{"exit_code": N}``. Body: ``{"command": ["echo", "hi"], "timeout": 0}``
    (seconds; 0: the agent's ``BURST_EXEC_TIMEOUT``). Needs a deploy or admin token."""
    require_exec(p, "container exec")
    try:
        eb = msgspec.json.decode(await request.body(), type=ExecBody)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise InvalidError(f"invalid exec request: {e} (expected {{\"command\": [\"echo\", "
                           "\"hi\"], \"timeout\": seconds}})") from None
    if not eb.command or not all(isinstance(a, str) and a for a in eb.command):
        raise InvalidError("exec needs a command: a list of non-empty strings")
    if eb.timeout < 0:
        raise InvalidError(f"timeout={eb.timeout} must be 0 (the agent's) or more seconds")
    agent_id, v = await _owned(gw, container_id, p)
    ws = names.split_function_key(v.fn_key)[0]
    exec_id = uuid.uuid4().hex[:16]
    reply = gw.nc.new_inbox()
    frames: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1000)

    async def on_frame(msg: Any) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            frames.put_nowait(msg.data)

    sub = await gw.nc.subscribe(reply, cb=on_frame)
    req = ExecRequest(exec_id=exec_id, container_id=container_id, workspace=ws,
                      argv=eb.command, reply=reply, timeout=eb.timeout, interactive=eb.stdin)
    try:
        answer = await gw.nc.request(names.container_exec_subject(agent_id), encode(req),
                                     timeout=gw.settings.exec_accept_timeout)
        accepted = ExecAcceptedDecoder.decode(answer.data)
    except Exception as e:
        await sub.unsubscribe()
        raise UnavailableError(f"the agent {agent_id if is_operator(p) else ''} of container "
                               f"{container_id!r} did not take the command ({type(e).__name__})"
                               ) from None
    if accepted.error:
        await sub.unsubscribe()
        kind = {"NotFoundError": NotFoundError, "ConflictError": ConflictError}.get(
            accepted.error_type, InvalidError)
        raise kind(accepted.error)

    if eb.stdin:
        gw.execs[exec_id] = (agent_id, p.workspace)

    async def stream() -> AsyncIterator[bytes]:
        try:
            while True:
                try:
                    raw = await asyncio.wait_for(frames.get(), gw.settings.web_agent_timeout)
                except TimeoutError:
                    yield (json.dumps({"stream": "stderr", "data": "burst: the container's "
                                       "agent stopped answering\n"}) + "\n").encode()
                    yield b'{"exit_code": 255}\n'
                    return
                out = ExecOutputDecoder.decode(raw)
                if out.kind == "exit":
                    yield (json.dumps({"exit_code": out.exit_code}) + "\n").encode()
                    return
                if out.kind == "stdin_ready":
                    yield (json.dumps({"exec_id": exec_id, "stdin": True}) + "\n").encode()
                if out.kind in ("stdout", "stderr"):
                    yield (json.dumps({"stream": out.kind, "data": out.data.decode(
                        errors="replace")}) + "\n").encode()
        finally:
            gw.execs.pop(exec_id, None)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    return StreamingResponse(stream(), media_type="application/x-ndjson")


@router.post("/v1/execs/{exec_id}/stdin", tags=["containers"], status_code=202)
async def exec_stdin(exec_id: str, request: Request, gw: GatewayDep,
                     eof: bool = Query(False, description="No more input after this."),
                     p: Principal = Depends(principal)) -> dict[str, Any]:
    """A chunk of an interactive exec's stdin (the body, raw bytes), sent to the gateway
    streaming its output."""
    found = gw.execs.get(exec_id)
    if found is None or found[1] != p.workspace:
        raise NotFoundError(f"exec {exec_id!r} is not running through this gateway")
    body = await request.body()
    if len(body) > 1 << 20:
        raise InvalidError(f"a stdin chunk of {len(body)} bytes is above 1 MiB")
    await gw.nc.publish(names.exec_stdin_subject(found[0], exec_id),
                        encode(ExecInput(exec_id=exec_id, data=body, eof=eof)))
    return {"exec_id": exec_id, "bytes": len(body)}


@router.post("/v1/apps/{app}/functions/{fn}/shell", tags=["containers"],
             status_code=201)
async def start_shell(app: str, fn: str, gw: GatewayDep,
                      p: Principal = Depends(principal)) -> dict[str, Any]:
    """A new container of the function (its image, mounts and secrets; billed as any
    container) held for a shell session: answers its container id and the session's call
    id once it is ready. The container is placed for the session alone (even past the
    function's ``max_containers``): it runs none of the function's inputs. Run commands
    in it with ``POST /v1/containers/{id}/exec``; end
    the session by cancelling the call (``DELETE /v1/calls/{call_id}``), which stops the
    container; it also ends at the function's timeout. Needs a deploy or admin token."""
    require_exec(p, "burst shell")
    function = fn
    dep = await gw.caller.function(p.workspace, app, function)
    now = time.time()
    call_id = calls.new_call_id(now)
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_line(msg: Any) -> None:
        with contextlib.suppress(Exception):
            ln = LogLineDecoder.decode(msg.data)
            if ln.event == "shell.ready" and not ready.done():
                ready.set_result(ln.container_id)
            elif ln.event == "container.stopped" and not ready.done():
                ready.set_exception(ConflictError(f"the shell's container stopped: {ln.line}"))

    sub = await gw.nc.subscribe(names.logs_filter(p.workspace, dep.app, function, "*",
                                                  call_id), cb=on_line)
    try:
        await gw.caller.submit_shell(p.workspace, dep, function, call_id)
        try:
            container_id = await asyncio.wait_for(ready, gw.settings.web_startup_timeout)
        except TimeoutError:
            with contextlib.suppress(Exception):
                await gw.caller.cancel(p.workspace, call_id)
            raise UnavailableError(f"no container of {app}/{function} was ready within "
                                   f"{gw.settings.web_startup_timeout:g} s (see `burst app "
                                   f"status {app}`)") from None
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    # Ready before its agent's next heartbeat names it: exec finds containers there.
    deadline = time.monotonic() + gw.settings.web_startup_timeout
    while await find_container(gw, container_id, p.workspace) is None:
        if time.monotonic() > deadline:
            raise UnavailableError(f"container {container_id!r} was ready but its agent "
                                   "never reported it")
        await asyncio.sleep(0.05)
    return {"call_id": call_id, "container_id": container_id, "app": dep.app,
            "function": function}
