"""Containers' network policy: settings, deny rules, and ``block_network=`` in the SDK."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import burst
from burst.exception import InvalidError
from burst_agent.runtimes import network
from burst_agent.runtimes.network import Network, NetworkSetupError, parse_cidrs, rules_v4


def test_bad_cidrs_are_named() -> None:
    with pytest.raises(ValueError, match=r"BURST_DENY_CIDRS='10.0.0.0/8,nope'.*'nope'"):
        parse_cidrs("BURST_DENY_CIDRS", "10.0.0.0/8,nope")
    with pytest.raises(ValueError, match=r"BURST_ALLOW_CIDRS=.*'10.0.0.0/33'"):
        Network.detect(Path("/nonexistent"), allow_cidrs="10.0.0.0/33")
    assert parse_cidrs("X", " 10.1.0.0/16 , 192.168.1.5,") == [
        ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("192.168.1.5/32")]


def test_bad_mode_and_timeout_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="BURST_CONTAINER_NETWORK='yes'.*auto, on or off"):
        Network.detect(tmp_path, mode="yes")
    with pytest.raises(ValueError, match="BURST_NETWORK_SETUP_TIMEOUT=0"):
        Network.detect(tmp_path, setup_timeout=0)


def test_rules_order_always_denied_then_allowed_then_denied() -> None:
    denied = [ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("192.0.2.1")]
    text = rules_v4(denied, parse_cidrs("d", "10.0.0.0/8"), parse_cidrs("a", "10.5.0.0/16"))
    lines = text.splitlines()
    out = [ln for ln in lines if ln.startswith("-A OUTPUT")]

    def first(fragment: str) -> int:
        return next(i for i, ln in enumerate(out) if fragment in ln)

    # Own loopback, the NAT's gateway and DNS first; then what is always denied; the allow
    # list opens only the operator's deny list, never the always-denied ranges.
    assert out[0] == "-A OUTPUT -o lo -j ACCEPT"
    assert first(f"-d {network.DNS}/32 -p udp --dport 53 -j ACCEPT") < first("10.0.2.0/24")
    assert first("169.254.0.0/16") < first("10.5.0.0/16 -j ACCEPT") < first("-d 10.0.0.0/8")
    assert first("192.0.2.1/32 -p tcp -j REJECT --reject-with tcp-reset") < first("10.5.0.0")
    assert lines[-2:] == ["COMMIT", ""] or lines[-1] == "COMMIT"


def test_off_and_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not Network.detect(tmp_path, mode="off").enabled
    monkeypatch.setattr(network.shutil, "which", lambda name: None)
    with capture_logs() as logs:
        assert not Network.detect(tmp_path).enabled
    (warned,) = [e for e in logs if e["event"] == "container_network_unavailable"]
    assert "slirp4netns" in warned["detail"] and "no network" in warned["detail"], warned
    with pytest.raises(NetworkSetupError, match="BURST_CONTAINER_NETWORK=on but slirp4netns"):
        Network.detect(tmp_path, mode="on")


def closed_fn() -> None: ...


def opened_fn() -> None: ...


def test_block_network_is_accepted_and_carried() -> None:
    app = burst.App("netapp")
    closed = app.function(block_network=True)(closed_fn)
    opened = app.function()(opened_fn)
    assert closed.spec.block_network is True
    assert opened.spec.block_network is False
    with pytest.raises(InvalidError, match="block_network= takes True or False, got 'yes'"):
        app.function(block_network="yes")  # type: ignore[arg-type]


def test_docker_containers_join_the_network_unless_blocked(tmp_path: Path) -> None:
    pytest.importorskip("docker")
    from burst_agent.runtimes.base import ContainerSpec
    from burst_agent.runtimes.docker import DockerRuntime

    rt = DockerRuntime(tmp_path, client=object(), network_mode=network.DOCKER_NETWORK)

    def spec(blocked: bool) -> ContainerSpec:
        return ContainerSpec(container_id="c1", bundle_dir=tmp_path,
                             socket_path=tmp_path / "s.sock", module="m", qualname="f",
                             block_network=blocked)

    assert rt.run_options(spec(False), {}, "")["network_mode"] == network.DOCKER_NETWORK
    assert rt.run_options(spec(True), {}, "")["network_mode"] == "none"
    assert network.docker_network(object(), mode="off") == "none"
    with pytest.raises(ValueError, match="BURST_CONTAINER_NETWORK='nat'"):
        network.docker_network(object(), mode="nat")


def test_docker_rules_reject_before_the_allow_list() -> None:
    cmds = network.docker_rules([ipaddress.ip_network("169.254.0.0/16")],
                                parse_cidrs("d", "10.0.0.0/8"), parse_cidrs("a", "10.5.0.0/16"))
    egress = [" ".join(c) for c in cmds if c[1] == network.EGRESS_CHAIN]
    assert "ESTABLISHED" in egress[0]

    def first(fragment: str) -> int:
        return next(i for i, c in enumerate(egress) if fragment in c)

    assert first("169.254.0.0/16") < first("10.5.0.0/16 -j RETURN") < first("-d 10.0.0.0/8")
    assert egress[-1] == f"-A {network.EGRESS_CHAIN} -j RETURN"
    host = [" ".join(c) for c in cmds if c[1] == network.HOST_CHAIN]
    assert host[-1].endswith("-j REJECT --reject-with icmp-port-unreachable")
