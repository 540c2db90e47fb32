"""The agent: one machine's resources and the containers on it.

It registers its resources in its own KV record (where the scheduler claims them by
compare-and-set), heartbeats the state of its containers, starts a container for each
placement whose claim is on its record, stops containers on order, and releases each
container's claim when the container is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.kv import KeyValue
from opentelemetry.context import Context

from burst.wire import MAX_PAYLOAD
from burst_agent import gpu_health, gpus
from burst_agent.acks import Ack, settle
from burst_agent.attempts import Attempts
from burst_agent.bundles import BundleCache
from burst_agent.container import Container
from burst_agent.execs import Execs
from burst_agent.figures import Figures
from burst_agent.inputs import InputPuller
from burst_agent.prebuild import Prebuilder
from burst_agent.runtimes.base import Runtime
from burst_agent.runtimes.factory import make_runtime
from burst_agent.settings import AgentSettings
from burst_agent.volumes import VolumeCache
from burst_agent.web import WebRelay
from burst_core import bus, logs, names
from burst_core.calls.caller import Caller
from burst_core.objects import Objects
from burst_core.schemas import (
    AgentHeartbeat,
    AgentOrderDecoder,
    AgentRecord,
    AgentRecordDecoder,
    CallCancelledDecoder,
    DeploymentRecord,
    DeploymentRecordDecoder,
    FunctionDeployed,
    Placement,
    PreemptAgent,
    StopContainer,
    decoder,
    encode,
)
from burst_core.service import heartbeat_loop
from burst_core.tracing import ACCEPTED_HEADER, CALL_HEADER, Tracing
from burst_core.volumes import Volumes

log = logs.get("burst.agent")
FunctionDeployedDecoder = decoder(FunctionDeployed)

#: Cancelled call ids remembered (an input redelivered later is skipped), pruned past TTL.
CANCELLED_KEEP = 10_000
CANCELLED_TTL = 3600.0


def _nvml(inventory: gpus.Inventory) -> Any:
    """The NVML module, initialised, when this machine's GPUs are real; else None."""
    if inventory.declared or not inventory.gpus:
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception as e:
        log.warning("nvml_unavailable_for_metrics", error=repr(e))
        return None


def _total_memory_mb() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20))
    except (ValueError, OSError):
        return 4096


class Agent:
    def __init__(self, settings: AgentSettings, runtime: Runtime | None = None) -> None:
        self.settings = settings
        self.agent_id = settings.agent_id or settings.instance
        names.check_ident("agent", self.agent_id)
        self.runtime = runtime or make_runtime(settings, self.agent_id)
        self.containers: dict[str, Container] = {}
        #: Each function's pull of inputs for its ready containers here, by function key.
        self.pullers: dict[str, InputPuller] = {}
        self._tasks: list[asyncio.Task[None]] = []
        #: Answered inputs whose acks go out together (see ``ack_later``).
        self._acks: list[Msg] = []
        self._acks_timer: asyncio.TimerHandle | None = None
        self._hb_seq = 0
        self.preempted = False  # a reclaim notice came: no new containers here
        #: Cut off by NATS (our user revoked or expired): the agent exits, status 3.
        self.revoked = False
        #: We close the connection ourselves (stop): its closing is no cut-off.
        self._closing = False
        #: `burst agent drain` in progress (see ``drain``).
        self._drain: asyncio.Task[None] | None = None
        #: Web requests taken from the gateway (started with the agent).
        self.web = WebRelay(self)
        #: Figures for /metrics (GPUs and NVML are known once started).
        self.figures = Figures(self.agent_id, [], enabled=settings.metrics)
        self.execs = Execs(self)
        #: Images built as their functions are deployed (started with the agent).
        self.prebuild = Prebuilder(self)
        self.started_at = time.time()
        # Unix socket paths are limited to 108 bytes: keep them short, under /tmp.
        self.socket_dir = tempfile.mkdtemp(prefix="burst-")
        #: Calls made from this agent's containers (started by the first, see ``caller``).
        self._caller: Caller | None = None
        self._deployments: bus.KVMirror[DeploymentRecord] | None = None
        self._caller_lock = asyncio.Lock()
        #: Called once drained by `burst agent drain`: the service stops the agent.
        self.leave: Callable[[], None] = lambda: None

    async def start(self) -> None:
        s = self.settings
        self.inventory = gpus.discover(s.gpus)
        log.info("gpu_inventory", status=self.inventory.status,
                 gpus=[g.type for g in self.inventory.gpus])
        self.nc = await bus.connect(s.nats_url, f"agent-{self.agent_id}",
                                    reconnected=self._on_reconnected, ca=s.nats_ca,
                                    error=self._on_nats_error, closed=self._on_nats_closed)
        self.js = self.nc.jetstream()
        topo = s.topology()  # (checks the retention settings whoever creates the streams)
        if s.ensure_topology:
            await bus.ensure_topology(self.js, topo)
        self.agents_kv = await self._wait_for_bucket(names.KV_AGENTS)
        self.tracing = Tracing("agent", self.nc, s.trace_sample, s.trace_otlp_endpoint,
                               enabled=s.tracing)
        self.heartbeats_kv = await self.js.key_value(names.KV_HEARTBEATS)
        home = Path(s.home) / "agent" / self.agent_id
        self.attempts = Attempts(self)
        self.objects = Objects(self.js)
        self.volumes = Volumes(self.js, s.volume_max_bytes, s.volume_chunk_grace)
        self.volume_cache = VolumeCache(
            home / "volcache", s.volume_cache_bytes,
            s.sandbox_uid if os.geteuid() == 0 else None)
        self.bundles = BundleCache(await self.js.object_store(names.OBJ_BUNDLES), home / "bundles")
        #: Files images add as each container starts (copy=False), sent as bundles.
        self.local_files = BundleCache(self.bundles.store, home / "local-files")
        await self._register()
        # Cancelled calls (recent ones): never started here, stopped if running here.
        self.cancelled: dict[str, float] = {}
        #: The newest deployment of each function this agent heard of (redeploys).
        self.deployed: dict[str, str] = {}
        self._deployed_sub = await self.nc.subscribe(
            names.function_deployed_subject("*.*.*"), cb=self._on_deployed)
        self._cancel_sub = await self.nc.subscribe(names.SUBJECTS_CALL_CANCELLED,
                                                   cb=self._on_cancel)
        self._trace_sub = await self.nc.subscribe(
            names.trace_container_subject(self.agent_id), cb=self._on_trace_container)
        await self.web.start()
        await self.execs.start()
        self.figures.gpus, self.figures.nvml = self.inventory.gpus, _nvml(self.inventory)
        if s.metrics:
            self._tasks.append(asyncio.create_task(self._metrics_loop()))
        if self.figures.nvml is not None:
            self.gpu_health = gpu_health.Health(self.figures.nvml, self.inventory.gpus)
            self._tasks.append(asyncio.create_task(self._gpu_health_loop()))
        await self.prebuild.start()
        self.orders = bus.Consumer(
            self.js, names.STREAM_CONTROL, names.agent_consumer(self.agent_id), self._on_order,
            filter_subjects=[names.agent_orders_subject(self.agent_id)], ack_wait=10.0,
            deliver_new=True, concurrency=16,
        )
        await self.orders.start()
        self._tasks.append(asyncio.create_task(self._heartbeat_loop()))
        self._tasks.append(asyncio.create_task(heartbeat_loop(
            self.js, "agent", self.agent_id, s.service_heartbeat_interval,
            lambda: {"containers": str(len(self.containers)), "gpus": self.inventory.status},
            health_file=s.health_file)))
        log.info("agent_started", agent_id=self.agent_id, cpu=self.record.cpu,
                 memory_mb=self.record.memory_mb, spot=s.spot, runtime=self.runtime.name)

    async def _on_nats_error(self, e: Exception) -> None:
        if isinstance(e, nats.errors.AuthorizationError) or "authorization" in str(e).lower():
            await self._cut_off(e)

    async def _on_nats_closed(self) -> None:
        """The connection closed for good while we did not close it: the server refused
        our credentials (nats-py does not reconnect after that)."""
        if not self._closing:
            await self._cut_off(self.nc.last_error or RuntimeError("NATS connection closed"))

    async def _cut_off(self, e: BaseException) -> None:
        """NATS no longer takes our credentials (`burst agent revoke`, or they expired):
        we are cut off for good. Every container is killed at once (what they ran runs
        again elsewhere, once the scheduler finds us lost), then the agent exits."""
        if self.revoked:
            return
        self.revoked = True
        log.error("agent_credentials_revoked", error=str(e),
                  containers=len(self.containers),
                  hint="this agent's NATS user was revoked (burst agent revoke) or its "
                       "credentials expired: join again with a new bundle")
        self.preempted = True
        # (nothing here waits on NATS: this runs inside nats-py's own callbacks)
        for c in list(self.containers.values()):
            c.kill("revoked")
        self.leave()

    async def _wait_for_bucket(self, bucket: str) -> KeyValue:
        """The KV bucket, once the services created the whole topology (the blobs'
        object store comes last), waiting up to ``topology_wait`` for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.topology_wait
        while True:
            try:
                if not self.settings.ensure_topology:
                    await self.js.object_store(names.OBJ_BLOBS)
                return await self.js.key_value(bucket)
            except (nats.js.errors.BucketNotFoundError, nats.js.errors.NotFoundError):
                if loop.time() > deadline:
                    raise RuntimeError(
                        f"KV bucket {bucket} did not appear within "
                        f"BURST_TOPOLOGY_WAIT={self.settings.topology_wait:g} s: are the "
                        "cluster's services running?") from None
                await asyncio.sleep(0.2)

    async def _register(self) -> None:
        s = self.settings
        self.record = AgentRecord(
            agent_id=self.agent_id, hostname=socket.gethostname(),
            cpu=s.cpu or float(os.cpu_count() or 1), memory_mb=s.memory_mb or _total_memory_mb(),
            gpus=self.inventory.gpus, gpus_declared=self.inventory.declared, spot=s.spot,
            runtime=self.runtime.name, allocations={}, started_at=self.started_at,
        )
        # A restarted agent has no containers: whatever was claimed on it before is void.
        await self.agents_kv.put(self.agent_id, encode(self.record))
        await self._beat()

    async def stop(self) -> None:
        """Stop every container (handing their inputs back), then leave the cluster."""
        if self.revoked:  # NATS refuses us: nothing to tell it, nobody to hand back to
            await self._stop_cut_off()
            return
        await self.orders.stop()
        stops = [c.stop("agent_shutdown") for c in list(self.containers.values())]
        await asyncio.gather(*stops, return_exceptions=True)
        waits = [c.done.wait() for c in list(self.containers.values())]
        if waits:
            await asyncio.wait_for(asyncio.gather(*waits), self.settings.stop_grace + 5)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.web.stop()
        await self.execs.stop()
        await self.prebuild.stop()
        if self._caller is not None:
            with contextlib.suppress(Exception):
                await self._caller.stop()
        if self._deployments is not None:
            await self._deployments.stop()
        await self.flush_acks()
        with contextlib.suppress(Exception):
            await self.heartbeats_kv.delete(self.agent_id)
            await self.agents_kv.delete(self.agent_id)
        self._closing = True
        try:
            await asyncio.wait_for(self.nc.drain(), 2.0)
        except Exception:  # nothing un-acked is left to lose: just close
            await self.nc.close()
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    async def _stop_cut_off(self) -> None:
        """Stop when NATS cut us off: the containers were killed; what is left of them
        (their records, their outputs) cannot reach anyone. Bounded waits only."""
        waits = [asyncio.ensure_future(c.done.wait()) for c in list(self.containers.values())]
        if waits:
            await asyncio.wait(waits, timeout=self.settings.stop_grace)
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.settings.stop_grace)
        self._closing = True
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    # ---- acks ----------------------------------------------------------------------
    def ack_later(self, msg: Msg) -> None:
        """Ack an input whose output is stored, within ``ack_delay``, with the others
        answered meanwhile."""
        self._acks.append(msg)
        if self._acks_timer is None:
            self._acks_timer = asyncio.get_running_loop().call_later(
                self.settings.ack_delay, self._ack_soon)

    def _ack_soon(self) -> None:
        self._acks_timer = None
        task = asyncio.ensure_future(self.flush_acks())
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def flush_acks(self, confirm: bool = False) -> None:
        """Send the acks held back now. With ``confirm``, wait (up to ``stop_ack_timeout``)
        until the server has taken each: a stopping container's answered inputs must have
        left the inputs stream before its stop is announced, or the scheduler, woken by
        the stop, counts them as waiting and places a container for work that is done."""
        if self._acks_timer is not None:
            self._acks_timer.cancel()
            self._acks_timer = None
        pending, self._acks = self._acks, []
        if not confirm:
            for msg in pending:
                await settle(msg, Ack())  # unacked: redelivered, found answered
            return
        timeout = self.settings.stop_ack_timeout
        results = await asyncio.gather(*(msg.ack_sync(timeout=timeout) for msg in pending),
                                       return_exceptions=True)
        for msg, res in zip(pending, results, strict=True):
            if isinstance(res, BaseException):  # unconfirmed: redelivered, found answered
                log.warning("ack_unconfirmed", subject=msg.subject, error=repr(res))

    # ---- orders --------------------------------------------------------------------
    async def _on_order(self, msg: Msg) -> None:
        try:
            order = AgentOrderDecoder.decode(msg.data)
        except Exception as e:
            raise bus.Reject(f"undecodable order: {e!r}") from None
        if isinstance(order, Placement):
            if self.preempted:  # claimed just before the reclaim notice: refuse it
                await self.release(order.container_id)
                return
            await self.place(order, self.tracing.incoming(msg.headers) if msg.headers else None,
                             (msg.headers or {}).get(CALL_HEADER, ""))
        elif isinstance(order, StopContainer):
            c = self.containers.get(order.container_id)
            if c is not None:
                await c.stop(order.reason, order.if_idle_since)
        elif isinstance(order, PreemptAgent):
            if order.leave:  # `burst agent drain`: may take minutes, the order is settled
                if self._drain is None:
                    self._drain = asyncio.create_task(
                        self.drain(order.reason, order.timeout or self.settings.drain_timeout))
                    self._tasks.append(self._drain)
                return
            await self.preempt(order.reason)

    async def drain(self, reason: str, timeout: float) -> None:
        """``burst agent drain``: nothing new is placed here (our record says draining),
        idle containers stop, the inputs running here finish (each container stops when
        its last one is done); whatever still runs after ``timeout`` seconds is
        interrupted at once and handed back (it runs again elsewhere). Then we leave."""
        self.preempted = True
        await self._mark_draining(reason)
        log.warning("agent_draining", reason=reason, timeout=timeout,
                    containers=len(self.containers))
        for c in list(self.containers.values()):
            c.retire(reason)
        await self._beat()
        waits = [asyncio.ensure_future(c.done.wait()) for c in list(self.containers.values())]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=timeout)
            for w in pending:
                w.cancel()
        left = list(self.containers.values())
        if left:
            log.warning("agent_drain_timed_out", timeout=timeout, containers=len(left),
                        in_flight=sum(len(c.in_flight) for c in left))
            await asyncio.gather(*(c.interrupt(reason) for c in left), return_exceptions=True)
        if self.settings.leave_when_drained:
            log.warning("agent_leaving", reason=reason)
            self.leave()

    async def preempt(self, reason: str = "preempted") -> None:
        """This machine's capacity is being reclaimed: drain it and stop every container.

        Draining is written to our record first, so no scheduler places here any more and
        our containers count as stopping; each stop hands its in-flight inputs back at once
        (another container picks them up) and gives ``@exit`` the stop grace.
        """
        self.preempted = True
        await self._mark_draining(reason)
        log.warning("agent_preempted", reason=reason, containers=len(self.containers))
        await asyncio.gather(*(c.stop(reason) for c in list(self.containers.values())),
                             return_exceptions=True)
        await self._beat()

    async def _mark_draining(self, reason: str) -> None:
        """Our record says draining: no scheduler places here any more, and our
        containers count as stopping (replacements are placed elsewhere)."""

        def drain(cur: bytes | None) -> bytes | None:
            if cur is None:
                return None
            rec = AgentRecordDecoder.decode(cur)
            if rec.draining:
                return None
            rec.draining, rec.drain_reason = True, reason
            return encode(rec)

        await bus.kv_cas(self.agents_kv, self.agent_id, drain)

    async def _on_trace_container(self, msg: Msg) -> None:
        """Does a traced call wait for one of our containers (still starting, or ready
        only after the call was accepted)? If so its start goes into the call's trace;
        the answer (b"1" or b"0") tells the scheduler whether its wait does too."""
        c = self.containers.get(msg.data.decode(errors="replace"))
        headers = msg.headers or {}
        ctx = self.tracing.incoming(headers)
        attached = False
        if c is not None and ctx is not None:
            try:
                accepted_at = float(headers.get(ACCEPTED_HEADER, "0"))
            except ValueError:
                accepted_at = 0.0
            attached = c.attach_trace(ctx, headers.get(CALL_HEADER, ""), accepted_at)
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(b"1" if attached else b"0")

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            ev = CallCancelledDecoder.decode(msg.data)
        except Exception:
            return
        now = time.time()
        self.cancelled[ev.call_id] = now
        if len(self.cancelled) > CANCELLED_KEEP:
            horizon = now - CANCELLED_TTL
            self.cancelled = {k: t for k, t in self.cancelled.items() if t > horizon}
        for c in list(self.containers.values()):
            await c.cancel(ev.call_id)

    async def _on_deployed(self, msg: Msg) -> None:
        """A function was (re)deployed: the containers of its older deployments here leave
        as the deployment's strategy says. Rolling: they take no new inputs and stop once
        theirs are done (web containers: see WebRelay); recreate: they stop at once, and
        what they ran is handed back to run on the new code."""
        try:
            event = FunctionDeployedDecoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        fn_key = names.function_key(event.workspace, event.app, event.function.name)
        self.deployed[fn_key] = event.deployment_id
        for c in list(self.containers.values()):
            if c.fn_key != fn_key or c.placement.deployment_id == event.deployment_id:
                continue
            if event.strategy == "recreate":
                await c.stop("redeployed")
            elif not c.fn.web and not c.shell_call_id:  # a shell session runs on
                c.retire()

    async def place(self, p: Placement, trace: Context | None = None,
                    trace_call: str = "") -> None:
        if p.container_id in self.containers:
            return  # redelivered order
        raw, _ = await bus.kv_get(self.agents_kv, self.agent_id)
        rec = AgentRecordDecoder.decode(raw) if raw else None
        if rec is None or p.container_id not in rec.allocations:
            # The claim is the decision: no claim on our record, no container.
            log.warning("placement_without_claim", container_id=p.container_id)
            return
        c = Container(agent=self, placement=p, trace=trace, trace_call=trace_call)
        fn_key = names.function_key(p.workspace, p.app, p.function.name)
        newest = self.deployed.get(fn_key)
        if (newest is not None and newest != p.deployment_id and not p.function.web
                and not p.shell_call_id):
            c.retired = True  # placed for a deployment replaced since: never takes input
        self.containers[c.id] = c
        task = asyncio.create_task(self._run_container(c))
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    def inputs(self, fn_key: str, ensure_consumer: Callable[[], Awaitable[object]],
               ) -> InputPuller:
        """The function's pull of inputs here, started for its first ready container."""
        p = self.pullers.get(fn_key)
        if p is None or p.closed:
            p = InputPuller(self.nc, names.STREAM_INPUTS, names.function_consumer(fn_key),
                            self.settings, ensure_consumer)
            self.pullers[fn_key] = p
            self._tasks.append(p.task)

            def gone(t: asyncio.Task[None], p: InputPuller = p) -> None:
                if t in self._tasks:
                    self._tasks.remove(t)
                if self.pullers.get(fn_key) is p:
                    del self.pullers[fn_key]
                if not t.cancelled() and t.exception() is not None:
                    log.error("input_pull_failed", fn_key=fn_key, error=repr(t.exception()))

            p.task.add_done_callback(gone)
        return p

    async def _on_reconnected(self) -> None:
        """Pull requests made before may be gone with the old connection: ask anew."""
        for p in self.pullers.values():
            p.reset()

    async def _run_container(self, c: Container) -> None:
        try:
            await c.run()
        finally:
            self.containers.pop(c.id, None)
            await self._beat()

    async def caller(self) -> Caller:
        """Calls from containers, made as the gateway makes them. Started by the first:
        it follows every output of the cluster, which an agent whose containers make no
        calls need not do."""
        async with self._caller_lock:
            if self._caller is None:
                s = self.settings
                deps: dict[str, DeploymentRecord] = {}
                mirror = bus.KVMirror(self.js, names.KV_DEPLOYMENTS, DeploymentRecordDecoder,
                                      what="deployment", items=deps)
                await mirror.start()
                self._deployments = mirror

                async def deployment(workspace: str, app: str) -> DeploymentRecord | None:
                    key = names.deployment_key(workspace, app)
                    dep = deps.get(key)
                    if dep is None:  # deployed a moment ago: not mirrored yet
                        raw, _ = await bus.kv_get(await self.js.key_value(names.KV_DEPLOYMENTS),
                                                  key)
                        dep = DeploymentRecordDecoder.decode(raw) if raw is not None else None
                    return dep

                caller = Caller(self.nc, self.js, deployment, max_sync_wait=s.call_max_wait,
                                signal_interval=s.call_signal_interval,
                                recent_outputs=s.recent_outputs,
                                recent_outputs_age=s.recent_outputs_age)
                await caller.start()
                self._caller = caller
        return self._caller

    async def blob_get(self, workspace: str, ref: str) -> bytes:
        """A call's argument above the inline limit (object store, by sha256), from the
        call's own workspace: blobs are scoped to the workspace that stored them."""
        if getattr(self, "_blobs", None) is None:
            self._blobs = await self.js.object_store(names.OBJ_BLOBS)
        res = await self._blobs.get(names.blob_name(workspace, ref))
        data = res.data or b""
        if hashlib.sha256(data).hexdigest() != ref:
            raise RuntimeError(f"blob {ref} is corrupt")
        return data

    async def blob_put(self, workspace: str, data: bytes) -> str:
        """Store a result above the inline limit as a blob of ``workspace``; its sha256."""
        if len(data) > MAX_PAYLOAD:
            raise ValueError(f"{len(data)} bytes exceed the {MAX_PAYLOAD >> 20} MiB payload limit")
        if getattr(self, "_blobs", None) is None:
            self._blobs = await self.js.object_store(names.OBJ_BLOBS)
        ref = hashlib.sha256(data).hexdigest()
        await self._blobs.put(names.blob_name(workspace, ref), data)
        return ref

    async def release(self, container_id: str) -> None:
        """Remove a gone container's claim from this agent's record (compare-and-set)."""

        def drop(cur: bytes | None) -> bytes | None:
            if cur is None:
                return None
            rec = AgentRecordDecoder.decode(cur)
            if container_id not in rec.allocations:
                return None
            del rec.allocations[container_id]
            return encode(rec)

        await bus.kv_cas(self.agents_kv, self.agent_id, drop)

    # ---- heartbeats ----------------------------------------------------------------
    async def _beat(self) -> None:
        self._hb_seq += 1
        hb = AgentHeartbeat(agent_id=self.agent_id, at=time.time(), seq=self._hb_seq,
                            containers=[c.view() for c in self.containers.values()],
                            web_requests=self.web.counts())
        try:
            await self.heartbeats_kv.put(self.agent_id, encode(hb))
        except Exception as e:
            log.warning("heartbeat_failed", error=repr(e))

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            await self._beat()
            await self._rejoin_if_lost()

    async def _gpu_health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.gpu_health_interval)
            try:
                await self.check_gpu_health()
            except Exception as e:  # a driver hiccup: the next look tries again
                log.warning("gpu_health_failed", error=repr(e))

    async def check_gpu_health(self) -> None:
        """One look at the GPUs' health (NVML): unhealthy GPUs and memory left behind go
        into this agent's record (the scheduler places nothing on an unhealthy GPU)."""
        pids = await asyncio.to_thread(self._container_pids)
        bad, left = await asyncio.to_thread(self.gpu_health.check, pids)
        if not bad and not left:
            return
        by_index = {g.index: g for g in self.inventory.gpus}
        for index, why in bad.items():
            if index in by_index:
                by_index[index].unhealthy = why
        for lo in left:
            if lo.gpu in by_index:
                by_index[lo.gpu].left = lo.describe()
        new_gpus = [msgspec.structs.replace(g) for g in self.inventory.gpus]

        def mark(cur: bytes | None) -> bytes | None:
            if cur is None:
                return None
            rec = AgentRecordDecoder.decode(cur)
            rec.gpus = new_gpus
            return encode(rec)

        await bus.kv_cas(self.agents_kv, self.agent_id, mark)
        self.record.gpus = new_gpus

    async def _metrics_loop(self) -> None:
        """Every ``metrics_interval``: each container's CPU and memory use (its view in
        the heartbeats carries them), and this agent's figures to the gateway."""
        while True:
            await asyncio.sleep(self.settings.metrics_interval)
            try:
                handles = {cid: c.handle for cid, c in self.containers.items()}
                await asyncio.to_thread(self.figures.sample, handles)  # reads /proc
                await asyncio.to_thread(self.figures.fold)  # off the loop
                pids = await asyncio.to_thread(self._container_pids)
                snap = self.figures.snapshot([c.view() for c in self.containers.values()],
                                             pids)
                await self.nc.publish(names.agent_metrics_subject(self.agent_id),
                                      encode(snap))
            except Exception as e:  # this interval's figures are lost, not the next ones
                log.warning("metrics_publish_failed", error=repr(e))

    def _container_pids(self) -> dict[int, str]:
        """Host pid -> container id, for NVML's processes (only GPU containers' matter)."""
        out: dict[int, str] = {}
        for cid, c in list(self.containers.items()):
            h = c.handle
            if h is None or not c.placement.gpu_indices:
                continue
            pids = h.pids() if hasattr(h, "pids") else ([h.pid] if h.pid else [])
            out.update((p, cid) for p in pids)
        return out

    async def _rejoin_if_lost(self) -> None:
        """A scheduler marked us lost (we were cut off): our claims are void and our
        containers' inputs run elsewhere, so stop them all and register afresh."""
        try:
            raw, _ = await bus.kv_get(self.agents_kv, self.agent_id)
        except Exception:  # NATS blip: the next beat looks again
            return
        if raw is None or not AgentRecordDecoder.decode(raw).lost_at:
            return
        log.warning("agent_marked_lost_rejoining", containers=len(self.containers))
        await asyncio.gather(*(c.stop("agent_lost") for c in list(self.containers.values())),
                             return_exceptions=True)
        self.started_at = time.time()
        await self._register()
