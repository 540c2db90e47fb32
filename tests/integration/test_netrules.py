"""The netrules service (``python -m burst_agent.netrules``) in a network namespace of its
own: the chains it loads, what it writes to rules.json, and the agent's check of that file.

Needs root and iproute2 (``ip netns``) and iptables: skipped without them, except under CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from burst_agent.runtimes import network

pytestmark = pytest.mark.integration


def _need() -> str:
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "iptables", "iptables-restore"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return ""


@pytest.fixture
def ns() -> Iterator[str]:
    if why := _need():
        if os.environ.get("CI"):
            pytest.fail(f"{why}, and CI is set")
        pytest.skip(why)
    name = f"bnr-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        sh(name, "ip", "link", "set", "lo", "up")
        # An address of the namespace's own (the "host's"), and the engine's chains.
        sh(name, "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        sh(name, "ip", "addr", "add", "198.51.100.7/24", "dev", "v0")
        sh(name, "iptables", "-N", "DOCKER-USER")
        sh(name, "iptables", "-A", "DOCKER-USER", "-j", "RETURN")
        sh(name, "iptables", "-A", "FORWARD", "-j", "DOCKER-USER")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=30)


def sh(ns: str, *argv: str) -> str:
    done = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
    return done.stdout


def netrules_once(ns: str, path: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BURST_")}
    env.update(BURST_NETRULES_FILE=str(path), BURST_LOG_LEVEL="info", **settings)
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m",
                           "burst_agent.netrules", "--once"], env=env, capture_output=True,
                          text=True, timeout=120)


def rules(ns: str, chain: str) -> list[str]:
    return [ln for ln in sh(ns, "iptables", "-S", chain).splitlines()
            if ln.startswith("-A ")]


def test_chains_loaded_in_order_and_rules_json_written(ns: str, tmp_path: Path) -> None:
    path = tmp_path / "netrules" / "rules.json"
    # The operator opens 172.16.0.0/12 again: Docker's bridges stay rejected all the same.
    done = netrules_once(ns, path, BURST_ALLOW_CIDRS="172.16.0.0/12")
    assert done.returncode == 0, done.stdout + done.stderr
    egress = rules(ns, network.EGRESS_CHAIN)

    def first(fragment: str) -> int:
        return next(i for i, r in enumerate(egress) if fragment in r)

    assert "ESTABLISHED" in egress[0] and egress[0].endswith("-j ACCEPT")
    assert first("-o docker0") < first("-o br-+") < first("-d 172.16.0.0/12 -j ACCEPT")
    assert "REJECT" in egress[first("-o br-+")]
    # The namespace's own address and the metadata range rejected, before the allow list.
    assert first("-d 198.51.100.7/32") < first("-d 172.16.0.0/12 -j ACCEPT")
    assert first("-d 169.254.0.0/16") < first("-d 172.16.0.0/12 -j ACCEPT")
    # DNS only to the host's name servers, port 53 only; the rest of the internet passes.
    dns = network.nameservers()
    for addr in dns:
        mine = [r for r in egress if f"-d {addr}/32" in r and "ACCEPT" in r]
        assert mine and all("--dport 53" in r for r in mine), egress
    assert egress[-1] == f"-A {network.EGRESS_CHAIN} -j ACCEPT"
    host = rules(ns, network.HOST_CHAIN)
    assert [r for r in host if "ACCEPT" in r and "icmp" not in r] == [
        f"-A {network.HOST_CHAIN} -d {a}/32 -p {p} -m {p} --dport 53 -j ACCEPT"
        for a in dns for p in ("udp", "tcp")]
    assert host[-1].endswith("-j REJECT --reject-with icmp-port-unreachable")
    # The hooks: the bridge's egress and its replies in DOCKER-USER, what it sends the host
    # in INPUT.
    user = rules(ns, "DOCKER-USER")
    assert f"-A DOCKER-USER -i {network.DOCKER_BRIDGE} -j {network.EGRESS_CHAIN}" in user
    assert any(f"-o {network.DOCKER_BRIDGE}" in r and "ESTABLISHED" in r for r in user), user
    assert user[-1] == "-A DOCKER-USER -j RETURN"
    assert f"-A INPUT -i {network.DOCKER_BRIDGE} -j {network.HOST_CHAIN}" in rules(ns, "INPUT")
    # rules.json: this boot, now, what was loaded.
    state = json.loads(path.read_text())
    assert state["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert abs(time.time() - state["time"]) < 60
    assert "198.51.100.7/32" in state["denied"] and state["allow"] == ["172.16.0.0/12"]
    assert network.netrules_state(path, 60.0) == (True, "")

    # Loaded again: the same rules, no hook twice.
    again = netrules_once(ns, path, BURST_ALLOW_CIDRS="172.16.0.0/12")
    assert again.returncode == 0, again.stderr
    assert rules(ns, network.EGRESS_CHAIN) == egress
    assert rules(ns, "DOCKER-USER") == user


def test_the_agent_gives_network_only_while_rules_json_is_fresh(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    check = network.NetrulesCheck(path, max_age=5.0)
    assert check() == "none"  # no file: no network
    boot = network.boot_id()
    path.write_text(json.dumps({"boot_id": boot, "time": time.time()}))
    assert check() == network.DOCKER_NETWORK
    path.write_text(json.dumps({"boot_id": boot, "time": time.time() - 6}))
    assert check() == "none"  # stale
    ok, why = network.netrules_state(path, 5.0)
    assert not ok and "old (the limit is 5 s)" in why
    path.write_text(json.dumps({"boot_id": "another-boot", "time": time.time()}))
    assert network.netrules_state(path, 5.0) == (
        False, f"{path} is from another boot of this machine")
    path.write_text("{not json")
    assert check() == "none"


def test_a_failed_load_writes_no_rules_json(ns: str, tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    done = netrules_once(ns, path, BURST_DENY_CIDRS="10.0.0.0/8,not-a-network")
    assert done.returncode != 0
    assert "BURST_DENY_CIDRS=" in done.stdout + done.stderr and "not-a-network" in \
        done.stdout + done.stderr
    assert not path.exists()
