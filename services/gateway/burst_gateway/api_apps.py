"""Source bundles, app deployments and app logs."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import nats.js.errors
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from burst import _resources
from burst.exception import ConflictError, InvalidError, NotFoundError, PayloadTooLargeError
from burst.retries import Retries
from burst.volume import check_mount_path
from burst.wire import (
    MSGPACK,
    DeployRequest,
    DeployResponse,
    FunctionSpec,
    check_client_id,
    check_strategy,
    dev_name,
    is_app_id,
)
from burst_core import apps, bus, fits, logs, names, schedules
from burst_core.schemas import (
    AgentHeartbeatDecoder,
    AgentRecordDecoder,
    ClientHeartbeatDecoder,
    DeploymentRecord,
    FunctionDeployed,
    FunctionWaitingDecoder,
    LogLineDecoder,
    encode,
)
from burst_gateway import versions, web
from burst_gateway.api_volumes import volumes
from burst_gateway.auth import Principal, principal
from burst_gateway.state import Gateway, GatewayDep

log = logs.get("burst.gateway.apps")
router = APIRouter()
_deploy_decoder = msgspec.msgpack.Decoder(DeployRequest)
_HASH_LEN = 64


def _check_hash(h: str) -> str:
    if len(h) != _HASH_LEN or any(c not in "0123456789abcdef" for c in h):
        raise InvalidError(f"invalid bundle hash {h!r}: expected 64 lowercase hex digits (sha256)")
    return h


async def _check_volumes(gw: Gateway, workspace: str, req: DeployRequest) -> None:
    """Every mounted volume exists (made now if it says ``create_if_missing``) and is
    mounted where it may be; an unknown one fails the deploy, naming it."""
    vols = volumes(gw)
    for fn in req.functions:
        for m in fn.volumes:
            check_mount_path(m.path, f"function {fn.name!r}")
            await vols.record(workspace, m.name, create=m.create_if_missing)


async def _bundle_exists(gw: Gateway, workspace: str, h: str) -> bool:
    """Whether ``workspace`` stored the bundle ``h`` (bundles are scoped to their
    workspace: another workspace's copy of the same bytes does not count)."""
    try:
        await gw.bundles.get_info(names.bundle_name(workspace, h))
        return True
    except nats.js.errors.NotFoundError:
        return False


@router.head("/v1/bundles/{bundle_hash}", tags=["apps"])
async def bundle_head(bundle_hash: str, gw: GatewayDep,
                      p: Principal = Depends(principal)) -> Response:
    """200 when the caller's workspace has stored the source bundle, 404 otherwise."""
    _check_hash(bundle_hash)
    ok = await _bundle_exists(gw, p.workspace, bundle_hash)
    return Response(status_code=200 if ok else 404)


@router.put("/v1/bundles/{bundle_hash}", tags=["apps"], status_code=201)
async def bundle_put(bundle_hash: str, request: Request, gw: GatewayDep,
                     p: Principal = Depends(principal)) -> dict[str, Any]:
    """Store an app's source bundle (a tar archive) under its sha256, in the caller's
    workspace."""
    _check_hash(bundle_hash)
    body = await request.body()
    if len(body) > gw.settings.max_body_bytes:
        raise PayloadTooLargeError(
            f"bundle of {len(body)} bytes exceeds the {gw.settings.max_body_bytes} byte limit")
    actual = hashlib.sha256(body).hexdigest()
    if actual != bundle_hash:
        raise InvalidError(f"bundle hash mismatch: URL says {bundle_hash}, body hashes to {actual}")
    if not await _bundle_exists(gw, p.workspace, bundle_hash):
        await gw.bundles.put(names.bundle_name(p.workspace, bundle_hash), body)
    return {"hash": bundle_hash, "size": len(body)}


def _check_limits(fn: FunctionSpec) -> None:
    """The SDK's ranges again, for a request that did not come through the SDK: a NaN or
    negative resource would otherwise reach placement and billing."""
    for r in (fn.resources, *fn.gpu_fallbacks):
        _resources.resources(r.cpu, r.memory_mb, None)
        if r.gpu_type is not None or r.gpu_count:
            _resources.parse_gpu(f"{r.gpu_type}:{r.gpu_count}")
        _resources.count("memory_limit_mb", r.memory_limit_mb, hi=4 << 20)
    _resources.count("min_containers", fn.min_containers)
    _resources.count("max_containers", fn.max_containers, lo=1, allow_none=True)
    _resources.count("buffer_containers", fn.buffer_containers)
    _resources.count("max_inputs", fn.max_inputs, lo=1)
    _resources.count("target_inputs", fn.target_inputs)
    if fn.retries is not None:
        rp = fn.retries
        Retries(max_retries=rp.max_retries, backoff_coefficient=rp.backoff_coefficient,
                initial_delay=rp.initial_delay, max_delay=rp.max_delay)


def _validate(req: DeployRequest) -> None:
    try:
        names.check_ident("app", req.app)
        if is_app_id(req.app):
            raise ValueError(f"app name {req.app!r} has the form of an ephemeral app's id "
                             "('ap-' and 16 hex digits): choose another name")
        if req.client_id:
            if not req.ephemeral:
                raise ValueError("client_id is for an ephemeral run (ephemeral=true) only")
            check_client_id(req.client_id)
        if req.serve and not req.ephemeral:
            raise ValueError("serve is for an ephemeral run (ephemeral=true) only")
        seen = set()
        for fn in req.functions:
            names.check_ident("function", fn.name)
            if fn.name in seen:
                raise ValueError(f"function {fn.name!r} is defined twice")
            seen.add(fn.name)
            if not (1.0 <= fn.timeout <= 86400.0):
                raise ValueError(
                    f"function {fn.name!r}: timeout={fn.timeout} is outside 1..86400 s")
            if not (1.0 <= fn.scaledown_window <= 86400.0):
                raise ValueError(f"function {fn.name!r}: scaledown_window={fn.scaledown_window} "
                                 "is outside 1..86400 s")
            if fn.schedule is not None:
                schedules.check(fn.name, fn.schedule)
            _check_limits(fn)
        web.check_endpoints(req.app, req.functions)
    except ValueError as e:
        raise InvalidError(str(e)) from None
    except InvalidError as e:  # the SDK's own checks, named for the function
        raise InvalidError(f"function {fn.name!r}: {e}") from None
    if not req.functions:
        raise InvalidError(f"app {req.app!r} defines no functions")


@router.post("/v1/apps", tags=["apps"], status_code=201,
             openapi_extra={"requestBody": {"content": {MSGPACK: {}}, "required": True}})
async def deploy(request: Request, gw: GatewayDep, p: Principal = Depends(principal)) -> Response:
    """Deploy (or redeploy) an app from a stored bundle; body: msgpack ``DeployRequest``."""
    try:
        req = _deploy_decoder.decode(await request.body())
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise InvalidError(f"malformed deploy request: {e}") from None
    _validate(req)
    _check_hash(req.bundle_hash)
    web.check_hosts(gw.settings, p.workspace, req.app, req.functions,
                    gw.deployments_of(p.workspace))
    if not await _bundle_exists(gw, p.workspace, req.bundle_hash):
        raise InvalidError(f"bundle {req.bundle_hash} is not stored in workspace "
                           f"{p.workspace!r}: upload it first (PUT /v1/bundles/{{hash}})")
    for fn in req.functions:  # files an image adds at start: sent as bundles of their own
        for step in fn.image.steps if fn.image is not None else []:
            if step.mounted and step.bundle:
                _check_hash(step.bundle)
                if not await _bundle_exists(gw, p.workspace, step.bundle):
                    raise InvalidError(f"function {fn.name!r}: the files of its image's "
                                       f"{step.kind} at {step.path!r} (bundle {step.bundle}) "
                                       f"are not stored in workspace {p.workspace!r}: upload "
                                       "them first (PUT /v1/bundles/{hash})")
    if any(fn.secrets for fn in req.functions):  # stored ones checked, code-made ones sealed
        assert gw.secrets is not None
        await gw.secrets.prepare(p.workspace, req.functions)
    await _check_volumes(gw, p.workspace, req)
    # An ephemeral run gets an id of its own: several runs of an app (and its deployment)
    # live side by side, and Function.from_name(<name>) finds only the deployed one.
    # A `burst serve` run has the fixed id `{app}-dev`: each save redeploys it in place, so
    # its URLs stay the same and the agents retire the old version's containers.
    app_id = (dev_name(req.app) if req.serve else "ap-" + uuid.uuid4().hex[:16]
              if req.ephemeral else req.app)
    if req.serve:
        await _check_serve(gw, p.workspace, app_id, req)
    try:
        check_strategy(req.strategy)
    except ValueError as e:
        raise InvalidError(str(e)) from None
    dep = DeploymentRecord(
        workspace=p.workspace, app=app_id, deployment_id="dp-" + uuid.uuid4().hex[:12],
        bundle_hash=req.bundle_hash, functions=req.functions, created_at=time.time(),
        ephemeral=req.ephemeral, name=req.app if req.ephemeral else "",
        client_id=req.client_id, strategy=req.strategy, deployed_by=p.token_id,
    )
    dep = await _publish(gw, dep)
    resp = DeployResponse(app=app_id, workspace=p.workspace, deployment_id=dep.deployment_id,
                          functions=[f.name for f in dep.functions], name=dep.name,
                          web_urls={ep.name: web.url_of(gw.settings, p.workspace, app_id,
                                                        ep.name, ep)
                                    for f in dep.functions for ep in f.web},
                          version=dep.version, warnings=await _unsatisfiable(gw, dep))
    return Response(msgspec.msgpack.encode(resp), status_code=201, media_type=MSGPACK)


async def _unsatisfiable(gw: Gateway, dep: DeploymentRecord) -> list[str]:
    """Per function no agent could ever hold: ``"f: no agent can hold ..."``."""
    try:
        agents = [AgentRecordDecoder.decode(raw)
                  for raw in (await bus.kv_items(gw.js, names.KV_AGENTS)).values()]
    except Exception as e:  # a warning only: never in the way of a deployment
        log.warning("unsatisfiable_check_failed", error=repr(e))
        return []
    out = []
    for fn in dep.functions:
        why = fits.shortfall([fn.resources, *fn.gpu_fallbacks], agents)
        if why:
            out.append(f"function {fn.name}: {why}")
    return out


async def _publish(gw: Gateway, dep: DeploymentRecord) -> DeploymentRecord:
    """Record a deployment (a deployed app's next version first) and tell the scheduler
    and the agents: new calls go to it; the containers of the one it replaces leave as
    its ``strategy`` says (the agents retire them)."""
    if not dep.ephemeral:
        dep = await versions.record(gw.app_versions, dep, gw.settings.app_history,
                                    in_use=_bundles_in_use(gw, dep.workspace),
                                    drop_bundle=lambda h: _drop_bundle(gw, dep.workspace, h))
    await gw.deployments_kv.put(names.deployment_key(dep.workspace, dep.app), encode(dep))
    gw.remember(dep)
    for fn in dep.functions:
        fn_key = names.function_key(dep.workspace, dep.app, fn.name)
        await bus.publish(
            gw.js, names.function_deployed_subject(fn_key),
            encode(FunctionDeployed(workspace=dep.workspace, app=dep.app,
                                    deployment_id=dep.deployment_id, function=fn,
                                    strategy=dep.strategy, ephemeral=dep.ephemeral)),
            msg_id=f"{dep.deployment_id}:{fn.name}",
        )
    return dep


def _bundles_in_use(gw: Gateway, workspace: str) -> Callable[[], set[str]]:
    """The bundles the workspace's live deployments and runs use (never dropped)."""
    return lambda: {d.bundle_hash for d in gw.deployments_of(workspace)}


async def _drop_bundle(gw: Gateway, workspace: str, h: str) -> None:
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await gw.bundles.delete(names.bundle_name(workspace, h))


@router.get("/v1/apps/{app}/history", tags=["apps"])
async def app_history(app: str, gw: GatewayDep,
                      p: Principal = Depends(principal)) -> dict[str, Any]:
    """A deployed app's versions, newest first: when, its source bundle's hash, which
    token deployed it, and which one runs (the newest ``BURST_APP_HISTORY`` are kept)."""
    kept = await versions.of_app(gw.app_versions, p.workspace, app)
    if not kept:
        raise NotFoundError(f"app {app!r} has no deployed versions in workspace "
                            f"{p.workspace!r} (see `burst app list`)")
    current = await gw.deployment(p.workspace, app)
    running = current.version if current is not None and not current.ephemeral else 0
    return {"app": app, "versions": [{
        "version": v.version, "deployment_id": v.deployment.deployment_id,
        "created_at": v.deployment.created_at, "bundle_hash": v.deployment.bundle_hash,
        "deployed_by": v.deployment.deployed_by, "strategy": v.deployment.strategy,
        "rollback_of": v.deployment.rollback_of or None, "current": v.version == running,
        "functions": [f.name for f in v.deployment.functions],
    } for v in reversed(kept)]}


class Rollback(BaseModel):
    version: int | None = Field(default=None, description=(
        "The version to deploy again; default: the one before the running one."))
    strategy: str = Field(default="rolling", description="rolling or recreate.")


@router.post("/v1/apps/{app}/rollback", tags=["apps"])
async def rollback(app: str, body: Rollback, gw: GatewayDep,
                   p: Principal = Depends(principal)) -> dict[str, Any]:
    """Deploy a kept version of the app again, as a new version."""
    try:
        check_strategy(body.strategy)
    except ValueError as e:
        raise InvalidError(str(e)) from None
    kept = {v.version: v for v in await versions.of_app(gw.app_versions, p.workspace, app)}
    current = await gw.deployment(p.workspace, app)
    if not kept:
        raise NotFoundError(f"app {app!r} has no deployed versions in workspace "
                            f"{p.workspace!r} (see `burst app list`)")
    running = current.version if current is not None and not current.ephemeral else 0
    if body.version is None and not running:
        raise InvalidError(f"app {app!r} is not running: name the version to deploy again "
                           f"(see `burst app history {app}`)")
    target = body.version if body.version is not None else running - 1
    if target not in kept:
        which = (f"version {body.version}" if body.version is not None
                 else f"version before the running one ({running})")
        raise NotFoundError(f"app {app!r} has no {which}: kept versions are "
                            f"{', '.join(str(v) for v in sorted(kept))} (see `burst app "
                            f"history {app}`)")
    if target == running:
        raise ConflictError(f"version {target} of app {app!r} is the one running")
    old = kept[target].deployment
    if not await _bundle_exists(gw, p.workspace, old.bundle_hash):
        raise NotFoundError(f"the source bundle of version {target} of app {app!r} is no "
                            "longer stored")
    web.check_hosts(gw.settings, p.workspace, app, old.functions,
                    gw.deployments_of(p.workspace))
    dep = await _publish(gw, msgspec.structs.replace(
        old, deployment_id="dp-" + uuid.uuid4().hex[:12], created_at=time.time(),
        strategy=body.strategy, deployed_by=p.token_id, rollback_of=target, version=0,
        client_id="", ephemeral=False, name=""))
    return {"app": app, "version": dep.version, "rollback_of": target,
            "deployment_id": dep.deployment_id}


async def _check_serve(gw: Gateway, workspace: str, app_id: str, req: DeployRequest) -> None:
    """A `burst serve` run replaces neither a deployed app of its id nor the run of another
    `burst serve` whose client still heartbeats (one killed is reaped after the client
    timeout; its record goes with it)."""
    prior = await gw.deployment(workspace, app_id)
    if prior is None:
        return
    if not (prior.ephemeral and prior.name == req.app):
        raise ConflictError(f"app {app_id!r} is deployed in workspace {workspace!r}: "
                            f"`burst serve` of app {req.app!r} serves under that id "
                            f"(remove it, or rename app {req.app!r})")
    if prior.client_id and prior.client_id != req.client_id \
            and (await _client_of(gw, prior)).get("heartbeat_at") is not None:
        raise ConflictError(f"app {req.app!r} is already served as {app_id!r} by another "
                            f"`burst serve` (client {prior.client_id}): stop that one first "
                            f"(or `burst app stop {app_id}`)")


@router.get("/v1/apps", tags=["apps"])
async def list_apps(gw: GatewayDep, p: Principal = Depends(principal)) -> dict[str, Any]:
    """The workspace's apps: deployed ones, and ephemeral runs (``app`` is a run's id,
    ``name`` its app's name; ``detached`` when no client keeps it)."""
    deps = gw.deployments_of(p.workspace)
    return {"apps": [{"app": d.app, "name": d.name or d.app, "deployment_id": d.deployment_id,
                      "created_at": d.created_at, "ephemeral": d.ephemeral,
                      "detached": d.ephemeral and not d.client_id,
                      "functions": [f.name for f in d.functions], **await _client_of(gw, d)}
                     for d in deps]}


async def _client_of(gw: Gateway, dep: DeploymentRecord) -> dict[str, Any]:
    """The client keeping an ephemeral run alive, and its last heartbeat."""
    if not dep.client_id:
        return {}
    kv = await gw.js.key_value(names.KV_CLIENTS)
    raw, _ = await bus.kv_get(kv, names.client_key(dep.workspace, dep.client_id))
    beat = ClientHeartbeatDecoder.decode(raw) if raw is not None else None
    return {"client_id": dep.client_id, "heartbeat_at": beat.at if beat else None,
            "heartbeats": beat.seq if beat else 0}


async def _find(gw: Gateway, workspace: str, app: str) -> DeploymentRecord:
    """The app named ``app`` (or the ephemeral run of that id); with no deployed app of
    that name, its latest live run."""
    dep = await gw.deployment(workspace, app)
    if dep is None and not is_app_id(app):
        runs = [d for d in gw.deployments_of(workspace) if d.name == app]
        dep = max(runs, key=lambda d: d.created_at) if runs else None
    if dep is None:
        raise NotFoundError(f"app {app!r} is not deployed in workspace {workspace!r} and has "
                            "no live run (see `burst app list`)")
    return dep


@router.get("/v1/apps/{app}/status", tags=["apps"])
async def app_status(app: str, gw: GatewayDep,
                     p: Principal = Depends(principal)) -> dict[str, Any]:
    """Per function: containers by state, inputs waiting in the queue, and why the
    function waits for a container when nothing fits. ``app`` is a name (the deployed app,
    else its latest run) or a run's id."""
    dep = await _find(gw, p.workspace, app)
    app = dep.app
    beats = await bus.kv_items(gw.js, names.KV_HEARTBEATS)
    containers: dict[str, dict[str, int]] = {}
    requests: dict[str, int] = {}  # web requests held by agents (running or waiting)
    for raw in beats.values():
        hb = AgentHeartbeatDecoder.decode(raw)
        for view in hb.containers:
            states = containers.setdefault(view.fn_key, {})
            states[view.state] = states.get(view.state, 0) + 1
        for fn_key, n in hb.web_requests.items():
            requests[fn_key] = requests.get(fn_key, 0) + n
    info = await gw.js.stream_info(names.STREAM_INPUTS,
                                   subjects_filter=names.input_subject(
                                       names.function_key(p.workspace, app, "*")))
    queued = info.state.subjects or {}
    waiting_kv = await gw.js.key_value(names.KV_WAITING)
    functions = []
    for fn in dep.functions:
        key = names.function_key(p.workspace, app, fn.name)
        waiting_raw, _ = await bus.kv_get(waiting_kv, key)
        waiting = (FunctionWaitingDecoder.decode(waiting_raw) if waiting_raw is not None
                   else None)
        functions.append({
            "function": fn.name, "containers": containers.get(key, {}),
            "queued": int(queued.get(names.input_subject(key), 0)),
            "waiting": {"reason": waiting.reason, "since": waiting.since} if waiting else None,
            "web_urls": {ep.name: web.url_of(gw.settings, p.workspace, app, ep.name, ep)
                         for ep in fn.web},
            "web_requests": requests.get(key, 0),
        })
    return {"app": app, "name": dep.name or dep.app, "ephemeral": dep.ephemeral,
            "detached": dep.ephemeral and not dep.client_id,
            "deployment_id": dep.deployment_id, "functions": functions}


@router.delete("/v1/apps/{app}", tags=["apps"])
async def remove_app(app: str, gw: GatewayDep,
                     p: Principal = Depends(principal)) -> dict[str, Any]:
    """Remove an app: no new calls; its containers are stopped by the scheduler. An
    ephemeral run (named by its id) also has its queued and running calls cancelled."""
    dep = await gw.deployment(p.workspace, app)
    if dep is None:
        raise NotFoundError(f"app {app!r} is not deployed in workspace {p.workspace!r}")
    gw.forget(p.workspace, app)
    cancelled = await apps.stop(gw.js, dep, reason="app stopped")
    return {"app": app, "removed": True, "cancelled": cancelled}


@router.get("/v1/apps/{app}/logs", tags=["apps"])
async def app_logs(app: str, request: Request, gw: GatewayDep,
                   p: Principal = Depends(principal)) -> StreamingResponse:
    """Follow an app's container output as NDJSON, from now on (``burst run`` shows it;
    the kept window, platform events and searches are ``GET /v1/logs``).

    The first line is ``{"type": "subscribed"}``: every line logged after it arrives.
    A ``{"type": "keepalive"}`` line is sent every 5 s of silence.
    """
    try:
        names.check_ident("app", app)
    except ValueError as e:
        raise InvalidError(str(e)) from None
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=10_000)

    async def on_msg(msg: Any) -> None:
        try:
            queue.put_nowait(msg.data)
        except asyncio.QueueFull:
            pass  # a slow reader loses lines, never slows the cluster down

    sub = await gw.nc.subscribe(names.app_logs_filter(p.workspace, app), cb=on_msg)
    await gw.nc.flush()  # the server has the interest before "subscribed" is promised

    async def lines() -> AsyncIterator[bytes]:
        try:
            yield b'{"type": "subscribed"}\n'
            while True:
                try:
                    data = await asyncio.wait_for(queue.get(), 5.0)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield b'{"type": "keepalive"}\n'
                    continue
                try:
                    ln = LogLineDecoder.decode(data)
                except Exception:
                    continue
                if ln.event and ln.event != "image.build":
                    continue  # platform events are for `burst app logs`, not `burst run`
                yield (json.dumps({"type": "log", "function": ln.function, "call_id": ln.call_id,
                                   "container_id": ln.container_id, "stream": ln.stream,
                                   "line": ln.line, "at": ln.at, "attempt": ln.attempt})
                       + "\n").encode()
        finally:
            await sub.unsubscribe()

    return StreamingResponse(lines(), media_type="application/x-ndjson")
