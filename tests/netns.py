"""Stand-ins for other machines on this one: network namespaces on a bridge.

The host's end of the bridge gets ``<net>.1``; each namespace ``<net>.<10+n>``. Nothing
is routed off the machine: the namespaces reach only the bridge's host address.
"""

from __future__ import annotations

import os
import shutil
import subprocess

BRIDGE_NET = "10.213.77"


def host_addr(net: str = BRIDGE_NET) -> str:
    return f"{net}.1"


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


class Machines:
    """A bridge on the host and network namespaces plugged into it."""

    def __init__(self, net: str = BRIDGE_NET) -> None:
        self.net = net
        tag = f"{os.getpid() % 10000}"
        self.bridge = f"bjbr{tag}"
        self.prefix = f"bj{tag}"
        self.namespaces: list[str] = []
        _sh("ip", "link", "add", self.bridge, "type", "bridge")
        _sh("ip", "addr", "add", f"{host_addr(self.net)}/24", "dev", self.bridge)
        _sh("ip", "link", "set", self.bridge, "up")

    def add(self) -> str:
        n = len(self.namespaces) + 1
        ns, host_end, ns_end = f"{self.prefix}m{n}", f"{self.prefix}h{n}", f"{self.prefix}n{n}"
        _sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        _sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        _sh("ip", "link", "set", ns_end, "netns", ns)
        _sh("ip", "link", "set", host_end, "master", self.bridge)
        _sh("ip", "link", "set", host_end, "up")
        _sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{self.net}.{10 + n}/24",
            "dev", ns_end)
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", ns_end, "up")
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        return ns

    def remove(self) -> None:
        for ns in self.namespaces:
            _sh("ip", "netns", "del", ns, check=False)
        _sh("ip", "link", "del", self.bridge, check=False)


def netns_works() -> bool:
    if os.geteuid() != 0 or not shutil.which("ip"):
        return False
    probe = f"bjprobe{os.getpid() % 10000}"
    ok = _sh("ip", "netns", "add", probe, check=False).returncode == 0
    _sh("ip", "netns", "del", probe, check=False)
    return ok
