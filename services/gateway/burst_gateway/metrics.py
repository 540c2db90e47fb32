"""``/metrics``: the whole cluster's figures in Prometheus' text format
(``prometheus-client``), from one scrape of any gateway.

Agents open no port: each publishes its figures over core NATS every
``BURST_METRICS_INTERVAL`` (``AgentMetrics``) and every gateway keeps the latest of each
(for ``BURST_METRICS_STALE`` seconds). Services' liveness records (KV) carry their process
figures; the ledger (KV) gives each app's spend. Labels are bounded: workspace, app,
function, agent, GPU index, service instance; never a call id.

Who sees what: a workspace token gets its own workspace's function and app figures; an
operator token gets everything (agents, GPUs, services, every workspace).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from burst_core import ledger, logs, metrics, names
from burst_core.schemas import AgentMetrics, FunctionFigures, Histogram
from burst_core.service import live_services
from burst_gateway.auth import Principal, is_operator, principal
from burst_gateway.state import GatewayDep

log = logs.get("burst.gateway.metrics")
router = APIRouter()


def _hist(name: str, doc: str, labels: list[str],
          rows: dict[tuple[str, ...], Histogram]) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, doc, labels=labels)
    for key, h in sorted(rows.items()):
        fam.add_metric(list(key), metrics.cumulative(h), h.total)
    return fam


def families(agents: list[AgentMetrics], workspace: str | None,
             spend: dict[tuple[str, str], float],
             services: list[tuple[str, str, dict[str, str]]]) -> Iterator[Metric]:
    """Every family ``/metrics`` shows; ``workspace`` None: all of them (an operator)."""
    fn_labels = ["workspace", "app", "function"]
    calls = CounterMetricFamily("burst_function_calls", "Calls answered (outputs stored), by "
                                "status: success, failure, timeout, terminated, internal.",
                                labels=[*fn_labels, "status"])
    errors = CounterMetricFamily("burst_function_errors", "Calls that failed, timed out or "
                                 "hit a platform error.", labels=fn_labels)
    cold = CounterMetricFamily("burst_function_cold_starts", "Containers started (each a "
                               "cold start).", labels=fn_labels)
    containers = GaugeMetricFamily("burst_function_containers", "Containers by state.",
                                   labels=[*fn_labels, "state"])
    in_flight = GaugeMetricFamily("burst_function_inputs_in_flight", "Inputs and web "
                                  "requests running or waiting in containers.",
                                  labels=fn_labels)
    latency: dict[tuple[str, ...], Histogram] = {}
    queue: dict[tuple[str, ...], Histogram] = {}
    cold_time: dict[tuple[str, ...], Histogram] = {}
    summed: dict[tuple[str, str, str], FunctionFigures] = {}
    for a in agents:
        for fn_key, f in a.functions.items():
            try:
                key = names.split_function_key(fn_key)
            except ValueError:
                continue
            if workspace is not None and key[0] != workspace:
                continue
            into = summed.setdefault(key, FunctionFigures())
            for status, n in f.calls.items():
                into.calls[status] = into.calls.get(status, 0) + n
            into.cold_starts += f.cold_starts
            for state, n in f.containers.items():
                into.containers[state] = into.containers.get(state, 0) + n
            into.in_flight += f.in_flight
            for rows, h in ((latency, f.latency), (queue, f.queue), (cold_time, f.cold_start)):
                if h is not None:
                    metrics.add(rows.setdefault(key, metrics.new_histogram()), h)
    for key, f in sorted(summed.items()):
        labels = list(key)
        for status, n in sorted(f.calls.items()):
            calls.add_metric([*labels, status], n)
        errors.add_metric(labels, sum(n for s, n in f.calls.items()
                                      if s in ("failure", "timeout", "internal")))
        cold.add_metric(labels, f.cold_starts)
        for state in ("starting", "idle", "busy", "stopping"):
            containers.add_metric([*labels, state], f.containers.get(state, 0))
        in_flight.add_metric(labels, f.in_flight)
    yield from (calls, errors, cold, containers, in_flight)
    yield _hist("burst_function_latency_seconds", "Seconds from an input's start in its "
                "container to its output.", fn_labels, latency)
    yield _hist("burst_function_queue_seconds", "Seconds from a call's acceptance to its "
                "start in a container.", fn_labels, queue)
    yield _hist("burst_function_cold_start_seconds", "Seconds from a container's placement "
                "to its being ready.", fn_labels, cold_time)
    money = CounterMetricFamily("burst_app_spend_dollars", "Cost billed to each app so far "
                                "(the ledger's; its rate() is the app's spend rate).",
                                labels=["workspace", "app"])
    for (ws, app), cost in sorted(spend.items()):
        if workspace is None or ws == workspace:
            money.add_metric([ws, app], cost)
    yield money
    if workspace is not None:
        return
    # The operator's view: machines, GPUs and services.
    cpu = GaugeMetricFamily("burst_agent_cpu_percent", "Machine CPU busy (%), over the "
                            "agent's last interval.", labels=["agent"])
    mem = GaugeMetricFamily("burst_agent_memory_used_bytes", "Machine memory in use.",
                            labels=["agent"])
    mem_total = GaugeMetricFamily("burst_agent_memory_total_bytes", "Machine memory.",
                                  labels=["agent"])
    gpu_util = GaugeMetricFamily("burst_gpu_utilisation_percent", "GPU utilisation (NVML).",
                                 labels=["agent", "gpu", "type"])
    gpu_mem = GaugeMetricFamily("burst_gpu_memory_used_bytes", "GPU memory in use (NVML).",
                                labels=["agent", "gpu", "type"])
    gpu_total = GaugeMetricFamily("burst_gpu_memory_total_bytes", "GPU memory (NVML).",
                                  labels=["agent", "gpu", "type"])
    gpu_ct = GaugeMetricFamily("burst_container_gpu_memory_used_bytes", "GPU memory of a "
                               "container's processes (where NVML maps them).",
                               labels=["agent", "gpu", "container"])
    age = GaugeMetricFamily("burst_agent_figures_age_seconds", "Seconds since the agent's "
                            "figures were taken.", labels=["agent"])
    now = time.time()
    for a in agents:
        cpu.add_metric([a.agent_id], a.cpu_percent)
        mem.add_metric([a.agent_id], a.memory_used_mb * (1 << 20))
        mem_total.add_metric([a.agent_id], a.memory_total_mb * (1 << 20))
        age.add_metric([a.agent_id], max(0.0, now - a.at))
        for g in a.gpus:
            labels = [a.agent_id, str(g.index), g.type]
            gpu_util.add_metric(labels, g.utilisation)
            gpu_mem.add_metric(labels, g.memory_used_mb * (1 << 20))
            gpu_total.add_metric(labels, g.memory_total_mb * (1 << 20))
            for cid, mb in sorted(g.containers.items()):
                gpu_ct.add_metric([a.agent_id, str(g.index), cid], mb * (1 << 20))
    yield from (cpu, mem, mem_total, age, gpu_util, gpu_mem, gpu_total, gpu_ct)
    up = GaugeMetricFamily("burst_service_up", "Service replicas alive (liveness records).",
                           labels=["service", "instance"])
    proc_cpu = CounterMetricFamily("burst_service_cpu_seconds", "CPU seconds of a service "
                                   "replica's process.", labels=["service", "instance"])
    proc_mem = GaugeMetricFamily("burst_service_resident_memory_bytes", "Resident memory "
                                 "of a service replica's process.", labels=["service", "instance"])
    for service, instance, info in services:
        up.add_metric([service, instance], 1)
        with contextlib.suppress(KeyError, ValueError):
            proc_cpu.add_metric([service, instance], float(info["cpu_seconds"]))
        with contextlib.suppress(KeyError, ValueError):
            proc_mem.add_metric([service, instance], float(info["rss_bytes"]))
    yield from (up, proc_cpu, proc_mem)


class _Snapshot:
    """A collector of families computed before the scrape (the reads are async)."""

    def __init__(self, fams: list[Metric]) -> None:
        self.fams = fams

    def collect(self) -> Iterator[Metric]:
        return iter(self.fams)


@router.get("/metrics", tags=["metrics"], response_class=Response)
async def metrics_endpoint(gw: GatewayDep, p: Principal = Depends(principal)) -> Response:
    """The cluster's figures in Prometheus' text format. An operator token sees every
    workspace, agent, GPU and service; a workspace token its own functions and apps."""
    operator = is_operator(p)
    figures, ttl = gw.agent_figures, gw.settings.metrics_cache_ttl

    async def spend_of() -> dict[tuple[str, str], float]:
        spend: dict[tuple[str, str], float] = {}
        try:
            snap = await ledger.load_snapshot(gw.js)
        except Exception as e:  # billing has not saved a ledger yet
            log.debug("metrics_ledger_unread", error=repr(e))
            return spend
        for line in snap.lines.values():
            key = (line.workspace, line.app)
            spend[key] = spend.get(key, 0.0) + line.cost
        return spend

    async def services_of() -> list[tuple[str, str, dict[str, str]]]:
        return [(hb.service, hb.instance, hb.info) for hb in
                await live_services(gw.js, gw.settings.service_heartbeat_timeout)]

    spend = await figures.cached("spend", ttl, spend_of)
    services = await figures.cached("services", ttl, services_of) if operator else []
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(list(families(
        gw.agent_figures.current(), None if operator else p.workspace, spend, services))))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
