"""Containers' network on the process runtime, end to end, on a network the test made.

The cluster under test (``burst up``, its agent, every container) runs inside a network
namespace this module creates; each stand-in lives in a namespace of its own, joined to the
cluster's by a veth pair: "the internet" (203.0.113.10, the cluster's default route), a
cloud metadata address (169.254.169.254), a private address (10.77.0.5) and a private
address the cluster's allow list opens (10.88.0.5, ``BURST_ALLOW_CIDRS``, which also lists
the cluster's own address, 127.0.0.0/8 and the metadata address: those stay refused), each
serving HTTP; and a DNS
stand-in at the machine's name server's address (the first ``nameserver`` of
``/etc/resolv.conf``), which answers one name. No route or address is added on the host, so
a block that fails never sends traffic off this machine. Functions report what they reach
(and resolve) from inside their containers.

Needs root, iproute2 and slirp4netns (``make install``): skipped without them, except under
``CI``, where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.e2e.conftest import BURST, FAST_TIMERS, REPO
from tests.waiting import eventually

pytestmark = pytest.mark.e2e

INTERNET = "203.0.113.10"
METADATA = "169.254.169.254"
PRIVATE = "10.77.0.5"
#: A private address the cluster's allow list opens (an internal service a workload needs).
ALLOWED = "10.88.0.5"
STAND_INS = {"inet": INTERNET, "meta": METADATA, "priv": PRIVATE, "allow": ALLOWED}
HTTP_PORT = 8080
#: The cluster's own address in its namespace (the first veth's near end).
CLUSTER_ADDR = "192.0.2.1"
#: The allow list of every cluster here: the allowed stand-in, and what must stay refused
#: however listed (the cluster's own address, the host's loopback range, the metadata
#: address: on the Docker runtime the last is what the allow list could wrongly open, as
#: the others are the host's own, which its containers reach only through INPUT).
ALLOW_CIDRS = f"10.88.0.0/16,{CLUSTER_ADDR}/32,127.0.0.0/8,{METADATA}/32"
#: The one name the DNS stand-in answers (with the internet stand-in's address).
DNS_NAME = "svc.burst-dns-test.example"

#: A DNS server for ``DNS_NAME`` only (A: the internet stand-in; AAAA: no address; any
#: other name: NXDOMAIN), on UDP port 53 of the address given.
DNS_SERVER = r"""
import socket, sys
addr, name, answer = sys.argv[1], sys.argv[2].encode(), socket.inet_aton(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, 53))
while True:
    q, peer = s.recvfrom(4096)
    i, labels = 12, []
    while q[i]:
        labels.append(q[i + 1:i + 1 + q[i]]); i += 1 + q[i]
    qtype = int.from_bytes(q[i + 1:i + 3], "big")
    question = q[12:i + 5]
    known = b".".join(labels).lower() == name
    flags = (0x8180 if known else 0x8183).to_bytes(2, "big")
    answers = b""
    if known and qtype == 1:
        answers = bytes([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]) + answer
    head = q[:2] + flags + bytes([0, 1, 0, 1 if answers else 0, 0, 0, 0, 0])
    s.sendto(head + question + answers, peer)
"""


def machine_nameserver() -> str:
    """The machine's first name server (``/etc/resolv.conf``): where the DNS stand-in is."""
    for line in Path("/etc/resolv.conf").read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["nameserver"] and len(parts) > 1 and ":" not in parts[1]:
            return parts[1]
    return ""


def _need(ok: bool, why: str) -> None:
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"{why}, and CI is set")
        pytest.skip(why)


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@dataclass
class Net:
    """The namespaces: ``ns["clu"]`` for the cluster, one per stand-in."""

    ns: dict[str, str]
    servers: list[subprocess.Popen[bytes]]

    def path(self, name: str) -> str:
        return f"/run/netns/{self.ns[name]}"


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    _need(os.geteuid() == 0, "network namespaces need root")
    for tool in ("ip", "nsenter", "slirp4netns", "iptables-restore", "bwrap"):
        _need(shutil.which(tool) is not None, f"{tool} is not installed (make install)")
    resolver = machine_nameserver()
    _need(bool(resolver), "/etc/resolv.conf names no IPv4 name server")
    tag = uuid.uuid4().hex[:6]
    n = Net({k: f"bt{tag}-{k}" for k in ("clu", *STAND_INS, "dns")}, [])
    www = Path(tempfile.mkdtemp(prefix="burst-net-www-"))
    try:
        for name in n.ns.values():
            sh("ip", "netns", "add", name)
        clu = n.ns["clu"]
        sh("ip", "-n", clu, "link", "set", "lo", "up")
        for i, (key, addr) in enumerate(STAND_INS.items()):
            ns, a, b = n.ns[key], f"bc{tag}{i}", f"bs{tag}{i}"
            near, far = f"192.0.2.{4 * i + 1}", f"192.0.2.{4 * i + 2}"
            # Made inside the cluster's namespace, then one end moved: never on the host.
            sh("ip", "-n", clu, "link", "add", a, "type", "veth", "peer", "name", b)
            sh("ip", "-n", clu, "link", "set", b, "netns", ns)
            sh("ip", "-n", clu, "addr", "add", f"{near}/30", "dev", a)
            sh("ip", "-n", clu, "link", "set", a, "up")
            sh("ip", "-n", ns, "addr", "add", f"{far}/30", "dev", b)
            sh("ip", "-n", ns, "addr", "add", f"{addr}/32", "dev", "lo")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", b, "up")
            sh("ip", "-n", ns, "route", "add", "default", "via", near)
            if key == "inet":
                sh("ip", "-n", clu, "route", "add", "default", "via", far)
            else:
                sh("ip", "-n", clu, "route", "add", f"{addr}/32", "via", far)
            d = www / key
            d.mkdir()
            (d / "who").write_text(key)
            n.servers.append(subprocess.Popen(
                ["nsenter", f"--net={n.path(key)}", sys.executable, "-m", "http.server",
                 "--bind", addr, "--directory", str(d), str(HTTP_PORT)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        # The DNS stand-in at the machine's name server's address: on the cluster's own
        # loopback if that is where it is, else in a namespace of its own.
        if resolver.startswith("127."):
            dns_ns = clu
        else:
            dns_ns, i = n.ns["dns"], len(STAND_INS)
            a, b = f"bc{tag}{i}", f"bs{tag}{i}"
            near, far = f"192.0.2.{4 * i + 1}", f"192.0.2.{4 * i + 2}"
            sh("ip", "-n", clu, "link", "add", a, "type", "veth", "peer", "name", b)
            sh("ip", "-n", clu, "link", "set", b, "netns", dns_ns)
            sh("ip", "-n", clu, "addr", "add", f"{near}/30", "dev", a)
            sh("ip", "-n", clu, "link", "set", a, "up")
            sh("ip", "-n", dns_ns, "addr", "add", f"{far}/30", "dev", b)
            sh("ip", "-n", dns_ns, "addr", "add", f"{resolver}/32", "dev", "lo")
            sh("ip", "-n", dns_ns, "link", "set", "lo", "up")
            sh("ip", "-n", dns_ns, "link", "set", b, "up")
            sh("ip", "-n", dns_ns, "route", "add", "default", "via", near)
            sh("ip", "-n", clu, "route", "add", f"{resolver}/32", "via", far)
        n.servers.append(subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{dns_ns}", sys.executable, "-c", DNS_SERVER,
             resolver, DNS_NAME, INTERNET],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        # A service of the cluster's machine on all its addresses (as one that other
        # machines reach): containers must not reach it through any of them.
        d = www / "clu"
        d.mkdir()
        (d / "who").write_text("clu")
        n.servers.append(subprocess.Popen(
            ["nsenter", f"--net={n.path('clu')}", sys.executable, "-m", "http.server",
             "--bind", "0.0.0.0", "--directory", str(d), str(HTTP_PORT)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for key, addr in [*STAND_INS.items(), ("clu", CLUSTER_ADDR)]:
            eventually(lambda a=addr, k=key: _fetch(n.path("clu"), a) == k, 30,
                       f"the {key} stand-in at {addr}")
        eventually(lambda: _resolve(n.path("clu"), resolver) == INTERNET, 30,
                   f"the DNS stand-in at {resolver}")
        yield n
    finally:
        for p in n.servers:
            p.kill()
            p.wait()
        for name in n.ns.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        shutil.rmtree(www, ignore_errors=True)


def _fetch(netns: str, addr: str) -> str:
    """``/who`` of the server at ``addr``, fetched from the namespace ``netns``."""
    proc = subprocess.run(
        ["nsenter", f"--net={netns}", sys.executable, "-c",
         "import sys, urllib.request as u; sys.stdout.write(u.urlopen("
         f"'http://{addr}:{HTTP_PORT}/who', timeout=5).read().decode())"],
        capture_output=True, text=True, timeout=30)
    return proc.stdout


def _resolve(netns: str, server: str) -> str:
    """``DNS_NAME``'s address as the DNS stand-in at ``server`` answers it (from ``netns``),
    or ""."""
    proc = subprocess.run(
        ["nsenter", f"--net={netns}", sys.executable, "-c", textwrap.dedent("""
            import socket, sys
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(3)
            q = bytes([0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]) + b"".join(
                bytes([len(p)]) + p for p in sys.argv[1].encode().split(b".")) + \
                bytes([0, 0, 1, 0, 1])
            s.sendto(q, (sys.argv[2], 53))
            r = s.recv(4096)
            sys.stdout.write(socket.inet_ntoa(r[-4:]) if r[7] else "")
            """), DNS_NAME, server],
        capture_output=True, text=True, timeout=30)
    return proc.stdout


@dataclass
class NsCluster:
    home: Path
    env: dict[str, str]
    netns: str

    def burst(self, *args: str, timeout: float = 120,
              check: bool = False) -> subprocess.CompletedProcess[str]:
        # nsenter, not `ip netns exec`: that one also remounts /sys (and the cgroups).
        proc = subprocess.run(["nsenter", f"--net={self.netns}", BURST, *args], env=self.env,
                              cwd=REPO, text=True, capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"burst {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    @property
    def profile(self) -> dict[str, str]:
        return json.loads((self.home / "profile.json").read_text())


@pytest.fixture(scope="module", params=["zygote", "fresh"])
def cluster(net: Net, request: pytest.FixtureRequest) -> Iterator[NsCluster]:
    """A cluster in the test's namespace: containers forked by the zygote (the first
    taking the spare sandbox), then fresh interpreters."""
    home = Path(tempfile.mkdtemp(prefix="burst-home-net-", dir="/var/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BURST_")}
    env.update(FAST_TIMERS, BURST_HOME=str(home), HOME=str(home), BURST_SANDBOX="on",
               BURST_ZYGOTE="1" if request.param == "zygote" else "0",
               BURST_ALLOW_CIDRS=ALLOW_CIDRS)
    c = NsCluster(home, env, net.path("clu"))
    try:
        up = c.burst("up", "--timeout", "90", timeout=110)
        if up.returncode != 0:
            c.burst("down")
            raise AssertionError(f"burst up failed:\n{up.stdout}\n{up.stderr}")
        yield c
        down = c.burst("down", timeout=60)
        assert down.returncode == 0, down.stderr
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def docker_cluster(net: Net) -> Iterator[NsCluster]:
    """A cluster with the Docker runtime, in the test's namespace, on a Docker engine of its
    own started there (so its bridge and iptables rules live in that namespace only), with
    the base image copied from the machine's engine."""
    src = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    _need(shutil.which("dockerd") is not None and shutil.which("docker") is not None,
          "dockerd or the docker CLI is not installed")
    have = subprocess.run(["docker", "-H", src, "image", "inspect", "burst-base:py311"],
                          capture_output=True, timeout=60)
    if have.returncode != 0:  # built on the machine's engine, whose host reaches the mirror
        built = subprocess.run(["bash", str(REPO / "deploy" / "base-image.sh")],
                               env={**os.environ, "DOCKER_HOST": src}, capture_output=True,
                               text=True, timeout=400)
        assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    state = Path(tempfile.mkdtemp(prefix="burst-net-dk-", dir="/var/tmp"))
    sock = f"unix://{state}/docker.sock"
    dockerd = subprocess.Popen(
        ["nsenter", f"--net={net.path('clu')}", "dockerd", "--host", sock,
         "--data-root", str(state / "root"), "--exec-root", str(state / "exec"),
         "--pidfile", str(state / "dockerd.pid")],
        stdout=subprocess.DEVNULL, stderr=open(state / "dockerd.log", "wb"))
    home = Path(tempfile.mkdtemp(prefix="burst-home-net-docker-", dir="/var/tmp"))
    try:
        eventually(lambda: subprocess.run(["docker", "-H", sock, "info"], capture_output=True,
                                          timeout=30).returncode == 0, 60, "the test's dockerd")
        subprocess.run(f"docker -H {src} save burst-base:py311 | docker -H {sock} load",
                       shell=True, check=True, capture_output=True, timeout=300)
        # The shim's wheels need the package index, which the namespace does not reach:
        # built here first (the agent finds them in the machine's cache).
        subprocess.run([sys.executable, "-c", "from burst_agent.runtimes.docker import "
                        "cached_wheels; cached_wheels()"], check=True, timeout=600)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BURST_")}
        env.update(FAST_TIMERS, BURST_HOME=str(home), HOME=str(home), DOCKER_HOST=sock,
                   BURST_ALLOW_CIDRS=ALLOW_CIDRS)
        c = NsCluster(home, env, net.path("clu"))
        up = c.burst("up", "--runtime", "docker", "--timeout", "240", timeout=270)
        if up.returncode != 0:
            c.burst("down")
            raise AssertionError(f"burst up failed:\n{up.stdout}\n{up.stderr}")
        yield c
        down = c.burst("down", timeout=60)
        assert down.returncode == 0, down.stderr
    finally:
        subprocess.run(f"docker -H {sock} ps -aq | xargs -r docker -H {sock} rm -f",
                       shell=True, capture_output=True, timeout=120)
        dockerd.terminate()
        try:
            dockerd.wait(timeout=30)
        except subprocess.TimeoutExpired:
            dockerd.kill()
            dockerd.wait()
        shutil.rmtree(home, ignore_errors=True)
        subprocess.run(["rm", "-rf", str(state)], capture_output=True, timeout=120)


APP = '''
import json, socket, urllib.request

import burst

app = burst.App("nettest")


def _probe(targets):
    out = {}
    for name, (host, port) in targets.items():
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/who", timeout=5) as r:
                out[name] = "reached:" + r.read().decode()
        except Exception as e:
            out[name] = type(e).__name__ + ": " + str(e)[:80]
    try:  # any socket outward at all
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"x", ("@INTERNET@", 53))
        out["udp"] = "sent"
    except OSError as e:
        out["udp"] = type(e).__name__
    with open("/proc/net/route") as f:
        out["routes"] = len(f.read().splitlines()) - 1
    try:  # a name, through the container's own forwarder
        out["dns"] = sorted({a[4][0] for a in socket.getaddrinfo("@DNS_NAME@", 80,
                                                                 socket.AF_INET)})
    except OSError as e:
        out["dns"] = type(e).__name__ + ": " + str(e)[:80]
    try:
        with urllib.request.urlopen("http://@DNS_NAME@:@PORT@/who", timeout=5) as r:
            out["by_name"] = "reached:" + r.read().decode()
    except Exception as e:
        out["by_name"] = type(e).__name__ + ": " + str(e)[:80]
    with open("/etc/resolv.conf") as f:
        out["nameservers"] = [ln.split()[1] for ln in f if ln.startswith("nameserver")]
    return out


@app.function(scaledown_window=5)
def open_net(targets):
    return _probe(targets)


@app.function(scaledown_window=5, block_network=True)
def blocked(targets):
    return _probe(targets)


@app.function(scaledown_window=5)
def host_view(paths):
    import os, ssl
    out = {}
    for p in paths:
        try:
            out[p] = sorted(os.listdir(p))[:5] if os.path.isdir(p) else open(p).read()[:200]
        except OSError as e:
            out[p] = type(e).__name__
    with open("/proc/1/cmdline", "rb") as f:
        out["pid1"] = f.read().decode(errors="replace")
    out["ifaces"] = sorted(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") \
        else [ln.split(":")[0].strip() for ln in open("/proc/net/dev").read().splitlines()[2:]]
    out["tls"] = ssl.create_default_context().cert_store_stats()["x509_ca"] > 0
    return out


TARGETS = @TARGETS@
PATHS = @PATHS@


@app.local_entrypoint()
def view():
    print("RESULT", json.dumps(host_view.remote(PATHS)))


@app.local_entrypoint()
def main():
    out = {}
    for name, fn in (("open", open_net), ("blocked", blocked)):
        try:
            out[name] = fn.remote(TARGETS)
        except Exception as e:
            out[name] = f"{type(e).__name__}: {e}"
    print("RESULT", json.dumps(out))
'''


def _cluster_ports(c: NsCluster) -> dict[str, int]:
    profile = c.profile
    ports = {"gateway": urlparse(profile["url"]).port or 0}
    settings = json.loads((c.home / "cluster.json").read_text()) \
        if (c.home / "cluster.json").exists() else {}
    for key in ("nats_url", "redis_url"):
        url = settings.get(key) or profile.get(key) or ""
        if url:
            ports[key.split("_")[0]] = urlparse(url.split(",")[0]).port or 0
    return ports


def test_internet_yes_cluster_and_private_ranges_never(cluster: NsCluster, tmp_path: Path,
                                                       request: pytest.FixtureRequest) -> None:
    check_network(cluster, tmp_path, request.node.callspec.params["cluster"] == "zygote",
                  forwarder="10.0.2.3")


@pytest.mark.timeout(600)  # the base image may be built first (about a minute)
def test_docker_internet_yes_cluster_and_private_ranges_never(
        docker_cluster: NsCluster, tmp_path: Path) -> None:
    check_network(docker_cluster, tmp_path, False, forwarder="127.0.0.11")


def check_network(cluster: NsCluster, tmp_path: Path, zygote: bool, forwarder: str) -> None:
    if zygote:
        log = cluster.home / "logs" / "agent.log"
        eventually(lambda: "spare_sandbox_ready" in log.read_text(), 60,
                   "the agent's spare sandbox: " + "\n".join(
                       ln for ln in log.read_text().splitlines()
                       if "spare" in ln or "zygote" in ln or "sandbox" in ln)[-3000:])
    targets: dict[str, tuple[str, int]] = {
        "internet": (INTERNET, HTTP_PORT), "metadata": (METADATA, HTTP_PORT),
        "private": (PRIVATE, HTTP_PORT), "allowed": (ALLOWED, HTTP_PORT)}
    targets.update({"host_addr": (CLUSTER_ADDR, HTTP_PORT),
                    "host_loopback": ("127.0.0.1", HTTP_PORT),
                    "nat_gateway": ("10.0.2.2", HTTP_PORT)})
    ports = _cluster_ports(cluster)
    assert "gateway" in ports and ports["gateway"], ports
    for name, port in ports.items():
        targets[f"{name}_loopback"] = ("127.0.0.1", port)
        # The cluster's namespace's own address (where a cluster listens for others).
        targets[f"{name}_host"] = (CLUSTER_ADDR, port)
    app = tmp_path / "net_app.py"
    app.write_text(textwrap.dedent(APP).replace("@TARGETS@", repr(targets))
                   .replace("@INTERNET@", INTERNET).replace("@PATHS@", "[]")
                   .replace("@DNS_NAME@", DNS_NAME).replace("@PORT@", str(HTTP_PORT)))
    proc = cluster.burst("run", f"{app}::main", check=True, timeout=180)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, proc.stdout + proc.stderr
    out = json.loads(line[len("RESULT "):])
    opened, blocked = out["open"], out["blocked"]
    assert isinstance(opened, dict) and isinstance(blocked, dict), out
    # The internet: yes by default, not with block_network=True.
    agent_log = (cluster.home / "logs" / "agent.log").read_text()
    net_lines = [ln for ln in agent_log.splitlines() if "network" in ln]
    assert opened["internet"] == "reached:inet", json.dumps([opened, net_lines[1:]])
    assert opened["udp"] == "sent", opened
    assert not blocked["internet"].startswith("reached"), blocked
    assert blocked["udp"] == "OSError", blocked  # ENETUNREACH: no route at all
    assert blocked["routes"] == 0, blocked
    # The allow list opens its private range, and only it (10.77.0.5 stays refused below);
    # not the cluster's own address, 127.0.0.0/8 or the metadata address, though it lists
    # them.
    assert opened["allowed"] == "reached:allow", opened
    assert not blocked["allowed"].startswith("reached"), blocked
    # Names resolve through the container's own forwarder (whose upstream is the machine's
    # name server, the DNS stand-in here), and not at all without a network.
    assert opened["nameservers"] == [forwarder], opened
    assert opened["dns"] == [INTERNET], opened
    assert opened["by_name"] == "reached:inet", opened
    assert not isinstance(blocked["dns"], list), blocked
    assert not blocked["by_name"].startswith("reached"), blocked
    # Never, in either mode: metadata, private ranges, the cluster's ports anywhere.
    for mode, got in out.items():
        for name, result in got.items():
            if name in ("internet", "udp", "routes", "dns", "by_name", "nameservers") or (
                    mode == "open" and name == "allowed"):
                continue
            assert not result.startswith("reached"), (mode, name, result)
            assert "refused" in result.lower() or "unreachable" in result.lower(), \
                (mode, name, result)


def test_a_container_sees_no_host_path_beyond_what_python_needs(
        cluster: NsCluster, tmp_path: Path) -> None:
    marker = Path("/home") / f"burst-net-test-{uuid.uuid4().hex[:6]}"
    marker.mkdir(parents=True)
    try:
        (marker / "secret").write_text("host file")
        paths = ["/etc/passwd", "/home", str(marker / "secret"), str(REPO / "tests"),
                 str(REPO / "pyproject.toml"), str(cluster.home), "/root", "/usr/bin"]
        app = tmp_path / "view_app.py"
        app.write_text(textwrap.dedent(APP).replace("@TARGETS@", "{}")
                       .replace("@INTERNET@", INTERNET).replace("@PATHS@", repr(paths))
                       .replace("@DNS_NAME@", DNS_NAME).replace("@PORT@", str(HTTP_PORT)))
        proc = cluster.burst("run", f"{app}::view", check=True, timeout=180)
    finally:
        shutil.rmtree(marker, ignore_errors=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, proc.stdout + proc.stderr
    out = json.loads(line[len("RESULT "):])
    host_passwd = Path("/etc/passwd").read_text()[:200]
    assert out["/etc/passwd"] != host_passwd and "nobody" in out["/etc/passwd"], out
    assert out["/home"] == "FileNotFoundError", out
    assert out[str(marker / "secret")] == "FileNotFoundError", out
    # The checkout: only what the interpreter imports from it (its venv, libs/).
    assert out[str(REPO / "tests")] == "FileNotFoundError", out
    assert out[str(REPO / "pyproject.toml")] == "FileNotFoundError", out
    assert out[str(cluster.home)] in ("FileNotFoundError", []), out
    assert out["/root"] in ("FileNotFoundError", [], [".pyenv"]), out
    assert isinstance(out["/usr/bin"], list) and out["/usr/bin"], out
    # pid 1 (bwrap) shows no host path; the interfaces are the container's own.
    assert str(cluster.home) not in out["pid1"] and "/run/burst" not in out["pid1"], out
    assert "--args" in out["pid1"], out
    assert set(out["ifaces"]) <= {"lo", "tap0"}, out
    assert out["tls"] is True, out
