"""Pieces of issue 20 that need no cluster: `--since`, log subjects, the agent's figures
(with an NVML stand-in: these machines have no GPU) and the families `/metrics` shows."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from burst._since import parse_since
from burst_agent.figures import Figures, gpu_figures
from burst_core import metrics, names
from burst_core.schemas import ContainerView, GpuInfo, Output
from burst_gateway.metrics import _Snapshot, families

NOW = 1_800_000_000.0


@pytest.mark.parametrize(("text", "back"), [("90s", 90), ("30m", 1800), ("1h", 3600),
                                            ("2d", 172800), ("1w", 604800),
                                            ("1h30m", 5400), ("1.5h", 5400)])
def test_since_durations(text: str, back: float) -> None:
    assert parse_since(text, NOW) == NOW - back


def test_since_times_and_bad_values() -> None:
    assert parse_since("2027-01-15T08:00:00Z", NOW) == NOW
    assert parse_since("2027-01-15T09:00:00+01:00", NOW) == NOW
    assert parse_since("2020-01-01T00:00:00", NOW) == 1577836800.0  # no zone: UTC
    for bad in ("", "1x", "h", "yesterday", "-1h", "10"):
        with pytest.raises(ValueError, match=f"invalid --since {bad!r}"):
            parse_since(bad, NOW)
    with pytest.raises(ValueError, match="in the future"):
        parse_since("2099-01-01T00:00:00Z", NOW)


def test_log_subjects_carry_container_and_call_and_refuse_wildcards() -> None:
    key = names.function_key("ws", "app", "fn")
    assert names.log_subject(key, "ct-1", "fc-2") == "burst.logs.ws.app.fn.ct-1.fc-2"
    assert names.log_subject(key, "ct-1", "") == "burst.logs.ws.app.fn.ct-1._"
    # A call id a shim made up cannot widen or break the subject.
    for forged in ("a.b", "*", ">", "x y", "z" * 65):
        assert names.log_subject(key, "ct-1", forged) == "burst.logs.ws.app.fn.ct-1._"
    assert names.logs_filter("ws", container_id="ct-1") == "burst.logs.ws.*.*.ct-1.*"
    assert names.app_logs_filter("ws", "app") == "burst.logs.ws.app.>"


def test_histograms_bucket_and_sum() -> None:
    h = metrics.new_histogram()
    for v in (0.001, 0.02, 0.02, 7.0, 1e9, -1.0):
        metrics.observe(h, v)
    cum = dict(metrics.cumulative(h))
    assert cum["0.005"] == 2  # 0.001 and the negative one (as 0)
    assert cum["0.025"] == 4 and cum["10.0"] == 5 and cum["+Inf"] == 6
    other = metrics.new_histogram()
    metrics.observe(other, 0.02)
    metrics.add(h, other)
    assert dict(metrics.cumulative(h))["+Inf"] == 7


def _out(status: str, started: float, finished: float) -> Output:
    return Output(call_id="fc-1", input_id="in-1", attempt_token="t", status=status,  # type: ignore[arg-type]
                  started_at=started, finished_at=finished)


def test_figures_count_outputs_and_cold_starts() -> None:
    f = Figures("a1", [])
    f.output("ws.app.fn", _out("success", 10.0, 10.5), accepted_at=9.0)
    f.output("ws.app.fn", _out("failure", 11.0, 11.1), accepted_at=11.0)
    f.cold_start("ws.app.fn", 0.3)
    views = [ContainerView(container_id="ct-1", fn_key="ws.app.fn", state="busy", in_flight=2),
             ContainerView(container_id="ct-2", fn_key="ws.app.fn", state="idle")]
    snap = f.snapshot(views)
    fig = snap.functions["ws.app.fn"]
    assert fig.calls == {"success": 1, "failure": 1} and fig.cold_starts == 1
    assert fig.containers == {"busy": 1, "idle": 1} and fig.in_flight == 2
    assert fig.latency is not None and sum(fig.latency.counts) == 2
    assert fig.queue is not None and fig.queue.total == pytest.approx(1.0)
    assert 0 <= snap.cpu_percent <= 100 and snap.memory_total_mb > 0
    off = Figures("a1", [], enabled=False)
    off.output("ws.app.fn", _out("success", 1.0, 2.0))
    off.cold_start("ws.app.fn", 1.0)
    assert off.functions == {}


def test_figures_count_web_requests_as_calls() -> None:
    f = Figures("a1", [])
    f.web("ws.app.page", "success", 0.02, 0.001)
    f.web("ws.app.page", "failure", 0.5, 0.25)
    f.output("ws.app.page", _out("success", 10.0, 10.5), accepted_at=9.0)
    fig = f.snapshot([]).functions["ws.app.page"]
    assert fig.calls == {"success": 2, "failure": 1}
    assert fig.latency is not None and sum(fig.latency.counts) == 3
    assert fig.queue is not None and fig.queue.total == pytest.approx(1.251)
    off = Figures("a1", [], enabled=False)
    off.web("ws.app.page", "success", 0.1, 0.1)
    assert off.functions == {}


class FakeNvml:
    """A stand-in for pynvml (NVML is absent on these machines)."""

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        return SimpleNamespace(gpu=40 + h, memory=10)

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return SimpleNamespace(used=(1 + h) << 30, total=80 << 30)

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[Any]:
        return [SimpleNamespace(pid=4242, usedGpuMemory=512 << 20),
                SimpleNamespace(pid=1, usedGpuMemory=1 << 20)]  # not a container's


def test_gpu_figures_from_nvml_map_processes_to_containers() -> None:
    gpus = [GpuInfo(index=0, type="H100"), GpuInfo(index=1, type="H100")]
    figs = gpu_figures(FakeNvml(), gpus, {4242: "ct-9"})
    assert [g.utilisation for g in figs] == [40.0, 41.0]
    assert figs[1].memory_used_mb == 2048 and figs[0].memory_total_mb == 80 * 1024
    assert figs[0].containers == {"ct-9": 512.0}
    snap = Figures("a1", gpus, nvml=FakeNvml()).snapshot([], {4242: "ct-9"})
    assert len(snap.gpus) == 2


def _scrape(workspace: str | None) -> dict[str, list[Any]]:
    gpus = [GpuInfo(index=0, type="H100")]
    a = Figures("agent-1", gpus, nvml=FakeNvml())
    a.output("ws1.app.fn", _out("success", 1.0, 1.2), accepted_at=0.5)
    a.output("ws2.other.fn", _out("timeout", 1.0, 3.0), accepted_at=0.5)
    b = Figures("agent-2", [])
    b.output("ws1.app.fn", _out("success", 1.0, 1.1), accepted_at=1.0)
    agents = [a.snapshot([]), b.snapshot([])]
    spend = {("ws1", "app"): 0.25, ("ws2", "other"): 1.0}
    services = [("gateway", "g1", {"cpu_seconds": "1.5", "rss_bytes": "1000"})]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(list(families(agents, workspace, spend, services))))
    text = generate_latest(registry).decode()
    out: dict[str, list[Any]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def test_metrics_families_sum_agents_and_parse() -> None:
    got = _scrape(None)
    calls = {(s.labels["workspace"], s.labels["status"]): s.value
             for s in got["burst_function_calls_total"]}
    assert calls == {("ws1", "success"): 2.0, ("ws2", "timeout"): 1.0}
    errors = {s.labels["workspace"]: s.value for s in got["burst_function_errors_total"]}
    assert errors == {"ws1": 0.0, "ws2": 1.0}
    inf = [s for s in got["burst_function_latency_seconds_bucket"]
           if s.labels["le"] == "+Inf" and s.labels["workspace"] == "ws1"]
    assert inf[0].value == 2.0
    assert {s.labels["agent"] for s in got["burst_agent_cpu_percent"]} == {"agent-1", "agent-2"}
    assert got["burst_gpu_utilisation_percent"][0].value == 40.0
    assert "burst_container_gpu_memory_used_bytes" not in got  # no pid of a container
    assert got["burst_service_cpu_seconds_total"][0].value == 1.5
    assert {s.labels["app"]: s.value for s in got["burst_app_spend_dollars_total"]} == {
        "app": 0.25, "other": 1.0}
    assert not any("call_id" in s.labels for ss in got.values() for s in ss)


def test_a_workspace_sees_only_its_own_figures() -> None:
    got = _scrape("ws1")
    assert {s.labels["workspace"] for s in got["burst_function_calls_total"]} == {"ws1"}
    assert {s.labels["app"] for s in got["burst_app_spend_dollars_total"]} == {"app"}
    assert not any(k.startswith(("burst_agent_", "burst_gpu_", "burst_service_"))
                   for k in got)


@pytest.mark.parametrize("name, value", [("shell_place_retry", 0.0),
                                         ("shell_place_timeout", -1.0)])
def test_bad_shell_placement_settings_are_named(name: str, value: float) -> None:
    from burst_scheduler.settings import SchedulerSettings

    with pytest.raises(ValueError, match=f"BURST_{name.upper()}={value}"):
        SchedulerSettings(**{name: value})  # type: ignore[arg-type]


def test_a_bad_shell_input_wait_is_named() -> None:
    from burst_agent.settings import AgentSettings

    with pytest.raises(ValueError, match="BURST_SHELL_INPUT_WAIT=0"):
        AgentSettings(shell_input_wait=0)
