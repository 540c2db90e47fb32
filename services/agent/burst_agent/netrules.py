"""``python -m burst_agent.netrules``: the compose cluster's ``netrules`` service.

The agent of the compose cluster runs in a container of its own and cannot reach the
host's iptables, where the function containers' deny rules must go (their bridge,
``burst0``, is the host's). This service is the only one in the host's network namespace
(``network_mode: host``), with NET_ADMIN and NET_RAW only, no engine socket and no port.
Every ``BURST_NETRULES_INTERVAL`` seconds it loads the chains of
``runtimes.network.docker_rules`` into the host's iptables in one transaction
(``iptables-restore --noflush``; the backend the host's engine uses, nft or legacy) and
writes ``BURST_NETRULES_FILE`` (``rules.json``: this boot's id, the time, what it loaded).
The agent gives a container its network only while that file is from this boot and
younger than ``BURST_NETRULES_MAX_AGE`` (``runtimes.network.NetrulesCheck``); else none.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from burst_agent.runtimes import network
from burst_agent.settings import AgentSettings
from burst_core import logs
from burst_core.settings import load

log = logs.get("burst.agent.netrules")


def backend() -> str:
    """The iptables tools' prefix for the backend the host's engine uses: ``iptables``
    (the image's default, nft), or ``iptables-legacy`` where only that one holds the
    engine's chains."""
    def has_docker(tool: str) -> bool:
        if shutil.which(tool) is None:
            return False
        return subprocess.run([tool, "-w", "10", "-n", "-L", "DOCKER-USER"],
                              capture_output=True, timeout=30).returncode == 0

    if not has_docker("iptables") and has_docker("iptables-legacy"):
        return "iptables-legacy"
    return "iptables"


def load_once(s: AgentSettings, path: Path, tool: str) -> dict[str, Any]:
    """Load the chains and write ``path`` (atomically). Returns what was written."""
    deny = network.parse_cidrs("BURST_DENY_CIDRS", s.deny_cidrs)
    allow = network.parse_cidrs("BURST_ALLOW_CIDRS", s.allow_cidrs)
    denied = network.denied_addresses([s.nats_url, s.redis_url])
    dns = network.nameservers()
    network.load_docker_rules(denied, deny, allow, dns, iptables=tool)
    state = {"boot_id": network.boot_id(), "time": time.time(), "iptables": tool,
             "bridge": network.DOCKER_BRIDGE, "chains": [network.EGRESS_CHAIN,
                                                         network.HOST_CHAIN],
             "denied": sorted({str(n) for n in denied if n.version == 4}),
             "deny": [str(n) for n in deny], "allow": [str(n) for n in allow],
             "dns": [str(a) for a in dns], "docker_bridges": list(network.DOCKER_BRIDGES)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=1))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return state


def run(s: AgentSettings, stop: threading.Event, once: bool = False) -> int:
    if not s.netrules_file:
        raise ValueError("BURST_NETRULES_FILE is not set: name the rules.json the agent reads")
    path = Path(s.netrules_file)
    tool = backend()
    log.info("netrules_started", file=str(path), iptables=tool, interval=s.netrules_interval)
    last = ""
    while True:
        try:
            state = load_once(s, path, tool)
            what = json.dumps({k: v for k, v in state.items() if k != "time"})
            if what != last:
                log.info("netrules_loaded", **{k: v for k, v in state.items() if k != "time"})
                last = what
        except (OSError, subprocess.SubprocessError, RuntimeError, ValueError) as e:
            # rules.json is not written: the agent gives no network once it is stale.
            log.error("netrules_failed", error=str(e))
            if once:
                return 1
        if once or stop.wait(s.netrules_interval):
            return 0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Load the containers' deny rules into this "
                                             "network namespace's iptables; write rules.json.")
    ap.add_argument("--once", action="store_true", help="load once and exit")
    args = ap.parse_args(argv)
    s = load(AgentSettings)
    logs.configure("netrules", s.log_level, s.instance)
    raise SystemExit(run(s, threading.Event(), once=args.once))


if __name__ == "__main__":
    main()
