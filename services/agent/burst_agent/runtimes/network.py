"""Containers' network: user-mode NAT with deny rules (process runtime), and the Docker
runtime's bridge network with the same rules (``docker_network``, at the end).

Each sandboxed container (unless its function says ``block_network=True``) gets a network
namespace of its own, made by ``unshare --net`` in front of bubblewrap. Before any code of
the container runs (the zygote's fork waits for its ``go``; a fresh interpreter's bwrap
waits behind a gate), the agent, both at once,

1. loads deny rules into that namespace's ``OUTPUT`` chain (``iptables-restore`` through
   ``nsenter``): the container's own loopback and its NAT's gateway and DNS forwarder are
   allowed; the host's loopback range, link-local and cloud metadata (169.254.0.0/16), the
   host's own addresses, the cluster's servers (NATS, Redis) and the operator's private
   ranges (``BURST_DENY_CIDRS``, RFC 1918 by default, less ``BURST_ALLOW_CIDRS``) are
   rejected; IPv6 goes nowhere but loopback. The container's uid has no capabilities, so
   it cannot change them;
2. attaches ``slirp4netns`` (host loopback disabled; not its ``--enable-sandbox``, whose
   unmounts reach the host's shared mounts) to it: the container reaches the
   internet through the agent's host as a plain user-space TCP/UDP client.

``slirp4netns`` exits when the sandbox does (its exit fd closes). Where it is not
installed, or the agent is not root (iptables in the namespace needs it), containers get
no network at all (bubblewrap's empty namespace) and the agent logs one warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from burst_core import logs

log = logs.get("burst.agent.network")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Private ranges denied unless the operator says otherwise (``BURST_DENY_CIDRS``).
DEFAULT_DENY_CIDRS = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16"
#: Never reachable, whatever the settings: the host's loopback range (the container's own
#: ``lo`` stays usable), link-local and cloud metadata, "this network", multicast.
ALWAYS_DENIED = ("127.0.0.0/8", "169.254.0.0/16", "0.0.0.0/8", "224.0.0.0/4")
#: slirp4netns's network inside the namespace (its defaults).
NAT_CIDR = "10.0.2.0/24"
GATEWAY = "10.0.2.2"
DNS = "10.0.2.3"
TAP = "tap0"
MTU = 65520


class NetworkSetupError(RuntimeError):
    pass


def parse_cidrs(setting: str, raw: str) -> list[IPNetwork]:
    """The networks of a comma-separated setting; a ValueError naming a bad one."""
    out: list[IPNetwork] = []
    for part in raw.split(","):
        item = part.strip()
        if not item:
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{setting}={raw!r} is not valid: {item!r} is not a network; use "
                             "comma-separated addresses or CIDRs such as 10.0.0.0/8,"
                             "192.168.1.5") from None
    return out


def host_addresses() -> list[IPNetwork]:
    """Every address of this host's interfaces (as /32 or /128 networks)."""
    try:
        out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
        links = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        log.warning("host_addresses_unknown", error=repr(e))
        return []
    addrs: list[IPNetwork] = []
    for link in links:
        for a in link.get("addr_info", []):
            with contextlib.suppress(ValueError, KeyError):
                addrs.append(ipaddress.ip_network(a["local"]))
    return addrs


def server_addresses(urls: list[str]) -> list[IPNetwork]:
    """The addresses the cluster's servers (``nats://h:p``, ``redis://h:p``) resolve to."""
    out: list[IPNetwork] = []
    for url in urls:
        for one in url.split(","):
            host = urlsplit(one.strip()).hostname
            if not host:
                continue
            try:
                infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
            except OSError:
                continue
            for info in infos:
                with contextlib.suppress(ValueError):
                    out.append(ipaddress.ip_network(str(info[4][0]).split("%")[0]))
    return out


def rules_v4(denied: list[IPNetwork], deny: list[IPNetwork], allow: list[IPNetwork]) -> str:
    """``iptables-restore`` input for a container's namespace: ``denied`` always, ``deny``
    less ``allow`` (allowed first)."""
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]",
             "-A OUTPUT -o lo -j ACCEPT",
             f"-A OUTPUT -d {GATEWAY}/32 -j ACCEPT",
             f"-A OUTPUT -d {DNS}/32 -p udp --dport 53 -j ACCEPT",
             f"-A OUTPUT -d {DNS}/32 -p tcp --dport 53 -j ACCEPT",
             f"-A OUTPUT -d {NAT_CIDR} -j REJECT"]

    def reject(net: IPNetwork) -> list[str]:
        # A TCP reset fails connect() at once (ECONNREFUSED); the rest gets ICMP.
        return [f"-A OUTPUT -d {net} -p tcp -j REJECT --reject-with tcp-reset",
                f"-A OUTPUT -d {net} -j REJECT --reject-with icmp-port-unreachable"]

    v4 = [n for n in denied if n.version == 4]
    for net in dict.fromkeys(v4):
        lines += reject(net)
    for net in dict.fromkeys(n for n in allow if n.version == 4):
        lines.append(f"-A OUTPUT -d {net} -j ACCEPT")
    for net in dict.fromkeys(n for n in deny if n.version == 4):
        lines += reject(net)
    return "\n".join([*lines, "COMMIT", ""])


#: IPv6: the container's own loopback only (slirp4netns gives it no IPv6 route anyway).
RULES_V6 = "\n".join(["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD DROP [0:0]",
                      ":OUTPUT DROP [0:0]", "-A OUTPUT -o lo -j ACCEPT", "COMMIT", ""])


@dataclass
class Network:
    """The agent's network policy for sandboxed containers; ``enabled`` when it gives them
    NAT (else they get none)."""

    slirp: str | None = None
    nsenter: str | None = None
    unshare: str | None = None
    dir: Path | None = None
    setup_timeout: float = 10.0
    deny: list[IPNetwork] = field(default_factory=list)
    allow: list[IPNetwork] = field(default_factory=list)
    denied: list[IPNetwork] = field(default_factory=list)

    @classmethod
    def detect(cls, state_dir: Path, *, mode: str = "auto",
               deny_cidrs: str = DEFAULT_DENY_CIDRS, allow_cidrs: str = "",
               servers: list[str] | None = None, setup_timeout: float = 10.0,
               sandboxed: bool = True) -> Network:
        """The policy for an agent whose state lives in ``state_dir``. ``mode``: ``auto``
        (NAT where this machine can give it, else none and one warning), ``on`` (refuse to
        start without it) or ``off`` (containers get no network). Bad settings raise a
        ValueError naming them."""
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"BURST_CONTAINER_NETWORK={mode!r} is not valid: use auto, on "
                             "or off")
        deny = parse_cidrs("BURST_DENY_CIDRS", deny_cidrs)
        allow = parse_cidrs("BURST_ALLOW_CIDRS", allow_cidrs)
        if not setup_timeout > 0:
            raise ValueError(f"BURST_NETWORK_SETUP_TIMEOUT={setup_timeout!r} is not valid: "
                             "use a number of seconds above 0")
        net = cls(setup_timeout=setup_timeout, deny=deny, allow=allow)
        if mode == "off":
            log.info("container_network_off", detail="BURST_CONTAINER_NETWORK=off: "
                     "containers get no network")
            return net
        if not sandboxed:
            if mode == "on":
                raise NetworkSetupError("BURST_CONTAINER_NETWORK=on but containers run "
                                        "without the sandbox (see BURST_SANDBOX)")
            return net  # no sandbox: the sandbox's own warning says containers are open
        tools = {t: shutil.which(t) for t in ("slirp4netns", "nsenter", "unshare",
                                               "iptables-restore", "ip")}
        missing = [t for t, p in tools.items() if p is None]
        why = ""
        if missing:
            why = f"{', '.join(missing)} not installed (apt-get install slirp4netns iptables)"
        elif os.geteuid() != 0:
            why = "the agent is not root (deny rules in a container's namespace need it)"
        if why and mode == "on":
            raise NetworkSetupError(f"BURST_CONTAINER_NETWORK=on but {why}")
        if why:
            log.warning("container_network_unavailable",
                        detail=f"{why}: containers get no network at all")
            return net
        net.denied = [*(ipaddress.ip_network(c) for c in ALWAYS_DENIED), *host_addresses(),
                      *server_addresses(servers or [])]
        net.slirp, net.nsenter, net.unshare = (tools["slirp4netns"], tools["nsenter"],
                                               tools["unshare"])
        net.dir = state_dir / "network"
        net.dir.mkdir(parents=True, exist_ok=True)
        (net.dir / "rules.v4").write_text(rules_v4(net.denied, deny, allow))
        (net.dir / "rules.v6").write_text(RULES_V6)
        (net.dir / "resolv.conf").write_text(f"nameserver {DNS}\n")
        os.chmod(net.dir / "resolv.conf", 0o644)
        log.info("container_network_ready", nat="slirp4netns", deny=[str(n) for n in deny],
                 allow=[str(n) for n in allow], denied=[str(n) for n in net.denied])
        return net

    @property
    def enabled(self) -> bool:
        return self.slirp is not None

    @property
    def resolv_conf(self) -> Path:
        assert self.dir is not None
        return self.dir / "resolv.conf"

    def prefix(self) -> list[str]:
        """The command prefix that puts a sandbox in a new, empty network namespace."""
        assert self.unshare is not None
        return [self.unshare, "--net", "--"]

    async def attach(self, pid: int, proc: asyncio.subprocess.Process) -> None:
        """Deny rules and NAT in the namespace of ``pid`` (a process of the sandbox
        ``proc`` runs); the NAT goes when ``proc`` exits. Raises NetworkSetupError (the
        caller kills the sandbox: no code may run in a namespace half set up)."""
        assert self.nsenter is not None and self.slirp is not None and self.dir is not None
        await self._wait_own_namespace(pid)
        d = self.dir
        v6 = (f" && ip6tables-restore {d / 'rules.v6'}" if os.path.exists("/proc/net/if_inet6")
              else "")
        script = f"ip link set lo up && iptables-restore {d / 'rules.v4'}{v6}"

        nsenter = self.nsenter

        async def load_rules() -> None:
            rules = await asyncio.create_subprocess_exec(
                nsenter, "-t", str(pid), "-n", "--", "/bin/sh", "-c", script,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE)
            _, err = await rules.communicate()
            if rules.returncode != 0:
                raise NetworkSetupError(f"deny rules failed ({rules.returncode}): "
                                        f"{err.decode(errors='replace').strip()[:300]}")

        try:
            async with asyncio.timeout(self.setup_timeout):
                # Both at once: nothing runs in the namespace until both are done (the
                # caller holds the container back), so their order does not matter; a
                # failure of either makes the caller kill the sandbox, and the NAT with it.
                await asyncio.gather(load_rules(), self._nat(pid, proc))
        except TimeoutError:
            raise NetworkSetupError(f"network setup took over {self.setup_timeout} s "
                                    "(BURST_NETWORK_SETUP_TIMEOUT)") from None

    async def _wait_own_namespace(self, pid: int) -> None:
        """Until ``pid`` is in a network namespace other than the agent's (``unshare``
        may not have run yet): rules must never land in the host's."""
        own = os.readlink("/proc/self/ns/net")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.setup_timeout
        while True:
            try:
                theirs = os.readlink(f"/proc/{pid}/ns/net")
            except OSError as e:
                raise NetworkSetupError(f"the sandbox (pid {pid}) is gone: {e}") from None
            if theirs != own:
                return
            if loop.time() > deadline:
                raise NetworkSetupError(f"pid {pid} never left the agent's network namespace")
            await asyncio.sleep(0.001)

    async def _nat(self, pid: int, proc: asyncio.subprocess.Process) -> None:
        assert self.slirp is not None
        ready_r, ready_w = os.pipe()
        exit_r, exit_w = os.pipe()
        os.set_inheritable(exit_w, False)
        try:
            slirp = await asyncio.create_subprocess_exec(
                # Not --enable-sandbox: its pivot_root and unmount of the old root reach
                # the host's shared mounts (``ip netns``'s, say) and unmount them there.
                self.slirp, "--configure", f"--mtu={MTU}", "--disable-host-loopback",
                "--enable-seccomp", f"--ready-fd={ready_w}",
                f"--exit-fd={exit_r}", str(pid), TAP,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, pass_fds=[ready_w, exit_r],
                start_new_session=True)
        except BaseException:
            for fd in (ready_r, exit_w):
                os.close(fd)
            raise
        finally:
            os.close(ready_w)
            os.close(exit_r)
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[bytes] = loop.create_future()

        def on_ready() -> None:
            if not ready.done():
                try:
                    ready.set_result(os.read(ready_r, 1))
                except OSError as e:
                    ready.set_exception(e)

        loop.add_reader(ready_r, on_ready)
        try:
            got = await ready
        except BaseException:
            os.close(exit_w)  # slirp4netns exits
            raise
        finally:
            loop.remove_reader(ready_r)
            os.close(ready_r)
        if got != b"1":
            os.close(exit_w)
            _, err = await slirp.communicate()
            raise NetworkSetupError("slirp4netns failed: "
                                    f"{err.decode(errors='replace').strip()[-300:]}")

        async def stop_with_sandbox() -> None:
            try:
                await proc.wait()
            finally:
                os.close(exit_w)
                with contextlib.suppress(Exception):
                    await slirp.wait()

        task = loop.create_task(stop_with_sandbox())
        _TASKS.add(task)
        task.add_done_callback(_TASKS.discard)


_TASKS: set[asyncio.Task[None]] = set()


# ---- the Docker runtime ------------------------------------------------------------------
#: The engine network containers join (``block_network=True``: none at all), its bridge, and
#: the host's iptables chains holding its deny rules.
DOCKER_NETWORK = "burst-containers"
DOCKER_BRIDGE = "burst0"
EGRESS_CHAIN = "BURST-EGRESS"
HOST_CHAIN = "BURST-HOST"


def docker_rules(denied: list[IPNetwork], deny: list[IPNetwork],
                 allow: list[IPNetwork]) -> list[list[str]]:
    """``iptables`` commands (after the chains are made and flushed): what the bridge's
    containers send through the host (``FORWARD``, via ``DOCKER-USER``) goes through
    ``EGRESS_CHAIN``; what they send to the host itself (``INPUT``: any of its addresses,
    the bridge's gateway included) is rejected but for ICMP (the gateway answers pings)."""
    cmds = [["-A", EGRESS_CHAIN, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED",
             "-j", "RETURN"]]

    def reject(net: IPNetwork) -> list[list[str]]:
        return [["-A", EGRESS_CHAIN, "-d", str(net), "-p", "tcp", "-j", "REJECT",
                 "--reject-with", "tcp-reset"],
                ["-A", EGRESS_CHAIN, "-d", str(net), "-j", "REJECT", "--reject-with",
                 "icmp-port-unreachable"]]

    for net in dict.fromkeys(n for n in denied if n.version == 4):
        cmds += reject(net)
    for net in dict.fromkeys(n for n in allow if n.version == 4):
        cmds.append(["-A", EGRESS_CHAIN, "-d", str(net), "-j", "RETURN"])
    for net in dict.fromkeys(n for n in deny if n.version == 4):
        cmds += reject(net)
    cmds.append(["-A", EGRESS_CHAIN, "-j", "RETURN"])
    cmds += [["-A", HOST_CHAIN, "-p", "icmp", "-j", "ACCEPT"],
             ["-A", HOST_CHAIN, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
             ["-A", HOST_CHAIN, "-j", "REJECT", "--reject-with", "icmp-port-unreachable"]]
    return cmds


def docker_network(client: Any, *, mode: str = "auto", deny_cidrs: str = DEFAULT_DENY_CIDRS,
                   allow_cidrs: str = "", servers: list[str] | None = None) -> str:
    """The ``network_mode`` of the Docker runtime's containers: its own bridge network with
    the deny rules loaded into the host's iptables (made if missing, rules reloaded), or
    ``"none"`` (``mode`` off, or where the rules cannot be loaded: one warning)."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"BURST_CONTAINER_NETWORK={mode!r} is not valid: use auto, on or off")
    deny = parse_cidrs("BURST_DENY_CIDRS", deny_cidrs)
    allow = parse_cidrs("BURST_ALLOW_CIDRS", allow_cidrs)
    if mode == "off":
        return "none"
    why = ""
    host = os.environ.get("DOCKER_HOST", "")
    if host and not host.startswith("unix://"):
        why = f"the engine is not on this machine (DOCKER_HOST={host})"
    elif shutil.which("iptables") is None:
        why = "iptables is not installed"
    elif os.geteuid() != 0:
        why = "the agent is not root (it loads the deny rules into the host's iptables)"
    if not why:
        try:
            _docker_setup(client, [*(ipaddress.ip_network(c) for c in ALWAYS_DENIED),
                                   *host_addresses(), *server_addresses(servers or [])],
                          deny, allow)
            return DOCKER_NETWORK
        except (OSError, subprocess.SubprocessError, RuntimeError) as e:
            why = f"the deny rules could not be loaded ({e})"
    if mode == "on":
        raise NetworkSetupError(f"BURST_CONTAINER_NETWORK=on but {why}")
    log.warning("container_network_unavailable", runtime="docker",
                detail=f"{why}: containers get no network at all")
    return "none"


def _iptables(*args: str, check: bool = True) -> bool:
    proc = subprocess.run(["iptables", "-w", "10", *args], capture_output=True, text=True,
                          timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"iptables {' '.join(args)}: {proc.stderr.strip()[:300]}")
    return proc.returncode == 0


def _docker_setup(client: Any, denied: list[IPNetwork], deny: list[IPNetwork],
                  allow: list[IPNetwork]) -> None:
    import docker.errors

    try:
        client.networks.get(DOCKER_NETWORK)
    except docker.errors.NotFound:
        with contextlib.suppress(docker.errors.APIError):  # another agent made it first
            client.networks.create(
                DOCKER_NETWORK, driver="bridge", labels={"burst": "containers"},
                options={"com.docker.network.bridge.name": DOCKER_BRIDGE,
                         # Containers do not reach each other either.
                         "com.docker.network.bridge.enable_icc": "false"})
        client.networks.get(DOCKER_NETWORK)
    for chain in (EGRESS_CHAIN, HOST_CHAIN):
        _iptables("-N", chain, check=False)
        _iptables("-F", chain)
    for cmd in docker_rules(denied, deny, allow):
        _iptables(*cmd)
    # DOCKER-USER comes first in FORWARD (the engine makes it); without it, FORWARD itself.
    forward = "DOCKER-USER" if _iptables("-L", "DOCKER-USER", "-n", check=False) else "FORWARD"
    for parent, chain in ((forward, EGRESS_CHAIN), ("INPUT", HOST_CHAIN)):
        hook = ["-i", DOCKER_BRIDGE, "-j", chain]
        if not _iptables("-C", parent, *hook, check=False):
            _iptables("-I", parent, "1", *hook)
    log.info("container_network_ready", runtime="docker", network=DOCKER_NETWORK,
             deny=[str(n) for n in deny], allow=[str(n) for n in allow],
             denied=[str(n) for n in denied])
