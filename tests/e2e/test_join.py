"""Machines joining a cluster, stood in for by network namespaces on this machine.

``burst up --listen`` binds the control plane to the host's end of a bridge that only
these namespaces reach (nothing is routed off the machine); each "machine" is a network
namespace with its own address on that bridge, where ``burst agent join BUNDLE`` runs an
agent that reaches the cluster only through the advertised address, over TLS, with the
bundle's credentials.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from burst.client import Client
from tests.e2e.test_cluster_cli import UP_TIMEOUT, burst, burst_command, require_servers, user_env
from tests.netns import BRIDGE_NET, Machines, netns_works

HOST_ADDR = f"{BRIDGE_NET}.1"

APP = '''
import time
import burst

app = burst.App("joined")

@app.function(cpu=0.5, memory=128, retries=0)
def slow(x: int) -> int:
    time.sleep(x)
    q = burst.Queue.from_name("join-done", create_if_missing=True)
    q.put(x)
    return x * 10
'''

# Short timers, so that a killed agent is noticed in seconds.
SETTINGS = {
    "BURST_HEARTBEAT_TIMEOUT": "3",
    "BURST_LOST_CHECK_INTERVAL": "0.2",
    "BURST_ACK_WAIT": "15",
    "BURST_CONTAINER_NETWORK": "off",
    # The supervisor looks for expired agent credentials every second.
    "BURST_CREDENTIAL_CHECK_INTERVAL": "1",
}


@pytest.fixture(scope="module")
def machines() -> Iterator[Machines]:
    if not netns_works():
        if os.environ.get("CI"):
            pytest.fail("network namespaces are needed (root and `ip netns`)")
        pytest.skip("network namespaces are needed (root and `ip netns`)")
    m = Machines()
    try:
        yield m
    finally:
        m.remove()


class Cluster:
    def __init__(self, env: dict[str, str], root: Path, machines: Machines) -> None:
        self.env, self.root, self.machines = env, root, machines
        self.agents: dict[str, subprocess.Popen[str]] = {}
        profile = json.loads((Path(env["BURST_HOME"]) / "profile.json").read_text())
        self.client = Client(profile["url"], profile["token"])

    def bundle(self, name: str, *extra: str) -> Path:
        path = self.root / f"{name}.json"
        done = burst(self.env, "agent", "token", "-o", str(path), *extra)
        assert done.returncode == 0, done.stderr
        return path

    def join_command(self, ns: str, bundle: Path, name: str, *extra: str) -> list[str]:
        """``burst agent join`` in namespace ``ns``, on a "machine" named ``host-<name>``
        (a UTS namespace of its own)."""
        return ["ip", "netns", "exec", ns, "unshare", "--uts", "sh", "-c",
                'hostname "$0" && exec "$@"', f"host-{name}", *burst_command(), "agent", "join",
                str(bundle), "--name", name, "--home", str(self.root / f"agent-{name}"),
                *extra]

    def join(self, ns: str, bundle: Path, name: str, *extra: str) -> subprocess.Popen[str]:
        log = open(self.root / f"agent-{name}.log", "w")  # noqa: SIM115 (kept by the child)
        proc = subprocess.Popen(self.join_command(ns, bundle, name, *extra), env=self.env,
                                stdout=log, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        self.agents[name] = proc
        return proc

    def agents_view(self) -> dict[str, dict[str, Any]]:
        data = self.client.get_json("/v1/agents")
        return {a["agent_id"]: a for a in data["agents"]}

    def wait_agent(self, name: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            a = self.agents_view().get(name)
            if a is not None and a["state"] == "ready" and a["heartbeat_age"] is not None \
                    and a["heartbeat_age"] < 3:
                return a
            proc = self.agents.get(name)
            if proc is not None and proc.poll() is not None:
                log = (self.root / f"agent-{name}.log").read_text()
                raise AssertionError(f"agent {name} exited ({proc.returncode}):\n{log[-3000:]}")
            time.sleep(0.2)
        raise AssertionError(f"agent {name} did not join within {timeout} s")


@pytest.fixture(scope="module")
def cluster(machines: Machines, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_servers()
    root = tmp_path_factory.mktemp("join")
    env = {**user_env(root), **SETTINGS}
    done = burst(env, "up", "--listen", HOST_ADDR, "--timeout", str(UP_TIMEOUT))
    assert done.returncode == 0, done.stdout + done.stderr
    c = Cluster(env, root, machines)
    try:
        yield c
    finally:
        for proc in c.agents.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        burst(env, "down")


def test_listen_on_an_address_the_machine_lacks_is_refused(tmp_path: Path) -> None:
    env = user_env(tmp_path)
    done = burst(env, "up", "--listen", "10.213.250.9", "--timeout", "30")
    assert done.returncode == 1
    assert "--listen 10.213.250.9: this machine has no such address" in done.stderr
    assert not (Path(env["BURST_HOME"]) / "cluster.json").exists()


def test_agents_join_run_work_and_a_killed_one_reruns_its_inputs_once(
        cluster: Cluster, tmp_path: Path) -> None:
    ns1, ns2 = cluster.machines.add(), cluster.machines.add()
    bundle = cluster.bundle("far")
    cluster.join(ns1, bundle, "far1")
    cluster.join(ns2, cluster.bundle("far-b"), "far2")
    cluster.wait_agent("far1")
    cluster.wait_agent("far2")
    listed = burst({**cluster.env, "COLUMNS": "200"}, "agent", "list")
    assert "far1" in listed.stdout and "far2" in listed.stdout, listed.stdout
    assert "host-far1" in listed.stdout and "host-far2" in listed.stdout, listed.stdout
    assert [cluster.agents_view()[n]["hostname"] for n in ("far1", "far2")] == \
        ["host-far1", "host-far2"]
    # The control machine's own agent takes no work: what runs, runs on the joined ones.
    assert cluster.client.post_json("/v1/agents/local/preempt", {})["preempted"]

    app = tmp_path / "joined.py"
    app.write_text(APP)
    done = burst(cluster.env, "deploy", str(app))
    assert done.returncode == 0, done.stdout + done.stderr
    script = tmp_path / "calls.py"
    script.write_text(
        "import burst, json, sys\n"
        "f = burst.Function.from_name('joined', 'slow')\n"
        "calls = [f.spawn(4) for _ in range(4)]\n"
        "print(json.dumps([c.object_id for c in calls]), flush=True)\n"
        "print(json.dumps([c.get(timeout=120) for c in calls]), flush=True)\n"
    )
    run_env = {**cluster.env, "BURST_URL": cluster.client.url,
               "BURST_TOKEN": cluster.client.token}
    caller = subprocess.Popen([str(Path(burst_command()[0]).parent / "python"), str(script)],
                              env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    # Wait for inputs running on a joined agent, then kill that machine's agent outright.
    deadline = time.monotonic() + 90
    victim = ""
    while time.monotonic() < deadline and not victim:
        view = cluster.agents_view()
        assert not view["local"]["containers"] or all(
            c["in_flight"] == 0 for c in view["local"]["containers"])
        busy = {n: sum(c["in_flight"] for c in view[n]["containers"])
                for n in ("far1", "far2") if n in view}
        victim = next((n for n, k in busy.items() if k > 0), "")
        time.sleep(0.2)
    assert victim, "no input ran on a joined agent"
    os.killpg(cluster.agents[victim].pid, signal.SIGKILL)
    out, err = caller.communicate(timeout=180)
    assert caller.returncode == 0, err[-3000:]
    results = json.loads(out.splitlines()[-1])
    assert results == [40, 40, 40, 40]
    # Each input finished exactly once: the killed attempts never reached the end.
    drain = tmp_path / "drain.py"
    drain.write_text(
        "import burst\n"
        "q = burst.Queue.from_name('join-done', create_if_missing=True)\n"
        "print(len(q.get_many(100, timeout=2)))\n"
    )
    counted = subprocess.run([str(Path(burst_command()[0]).parent / "python"), str(drain)],
                             env=run_env, capture_output=True, text=True, timeout=60)
    assert counted.stdout.strip() == "4", counted.stdout + counted.stderr
    survivor = "far2" if victim == "far1" else "far1"
    # `burst agent drain` takes the survivor out: it stops and leaves the cluster.
    done = burst(cluster.env, "agent", "drain", survivor)
    assert done.returncode == 0, done.stderr
    cluster.agents[survivor].wait(60)
    assert survivor not in cluster.agents_view()


def test_bad_bundles_and_names_are_refused_before_anything_joins(cluster: Cluster) -> None:
    ns = cluster.machines.add()
    good = cluster.bundle("good")
    cluster.join(ns, good, "far9")
    first = cluster.wait_agent("far9")

    def refused(bundle: Path, name: str, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(cluster.join_command(ns, bundle, name),
                              env={**cluster.env, **(env or {})}, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 1, done.stdout + done.stderr
        view = cluster.agents_view()
        if name == "far9":  # the agent of that name is undisturbed
            assert view[name]["started_at"] == first["started_at"]
            assert view[name]["state"] == "ready"
        else:
            assert name not in view
        return done.stderr

    # a second agent with the same name
    assert "an agent named 'far9' is already in the cluster" in refused(good, "far9")
    # tampered credentials or expiry
    doc = json.loads(good.read_text())
    for field, value in (("password", "0" * 48), ("expires_at", doc["expires_at"] + 9e6)):
        bad = cluster.root / f"tampered-{field}.json"
        bad.write_text(json.dumps({**doc, field: value}))
        assert "was altered after `burst agent token` wrote it" in refused(bad, "far8")
    # expired
    short = cluster.bundle("short", "--expires", "1s")
    time.sleep(1.5)
    assert "expired" in refused(short, "far8")
    # a bundle of another cluster (its own CA) pointed at this one
    other = cluster.root / "other-home"
    from burst import _natsconf
    _natsconf.ensure_tls(other, [HOST_ADDR])
    foreign = _natsconf.make_bundle(other, json.loads(good.read_text())["nats_urls"], 600)
    (cluster.root / "foreign.json").write_text(json.dumps(foreign))
    assert "is not part of cluster" in refused(cluster.root / "foreign.json", "far8")
    # a clock far off (here: any difference counts as far)
    assert "this machine's clock is" in refused(good, "far8",
                                                {"BURST_CLOCK_SKEW_MAX": "0.000001"})


def test_an_agents_credentials_cannot_reach_tokens_secrets_or_write_deployments(
        cluster: Cluster) -> None:
    import asyncio
    import ssl

    import nats

    from burst import _natsconf

    doc = json.loads(cluster.bundle("perm").read_text())
    ca = cluster.root / "perm-ca.pem"
    ca.write_text(doc["ca_pem"])

    async def probe() -> dict[str, str]:
        errors: list[str] = []

        async def on_error(e: Exception) -> None:
            errors.append(str(e))

        nc = await nats.connect(
            servers=_natsconf.user_url(doc["nats_urls"][0], doc["user"], doc["password"]),
            tls=ssl.create_default_context(cafile=str(ca)), error_cb=on_error)
        js = nc.jetstream()
        out: dict[str, str] = {}
        for bucket, write in (("burst_tokens", False), ("burst_secrets", False),
                              ("burst_deployments", True), ("burst_budgets", True),
                              ("burst_agents", False)):
            kv = await js.key_value(bucket)
            # (a refused request is never answered: it times out; an allowed one gets time)
            wait = 10 if bucket == "burst_agents" else 1
            try:
                if write:
                    await asyncio.wait_for(kv.put("ws.x", b"{}"), wait)
                else:
                    await asyncio.wait_for(kv.keys(), wait)
                out[bucket] = "allowed"
            except Exception:
                out[bucket] = "refused"
        await nc.close()
        out["errors"] = " ".join(errors)
        return out

    got = asyncio.run(probe())
    assert got["burst_tokens"] == got["burst_secrets"] == "refused", got
    assert got["burst_deployments"] == got["burst_budgets"] == "refused", got
    assert got["burst_agents"] == "allowed", got
    assert "permissions violation" in got["errors"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_call_resent_through_another_gateway_runs_once(cluster: Cluster, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from burst import wire
    from burst._serialization import deserialize, serialize

    # A second gateway of the same cluster, as the first was started (another port).
    state = json.loads((Path(cluster.env["BURST_HOME"]) / "cluster.json").read_text())
    first = next(p for p in state["parts"] if p["name"] == "gateway")
    env = dict(line.split("=", 1) for line in
               Path(f"/proc/{first['pid']}/environ").read_text().split("\0") if "=" in line)
    port = _free_port()
    env.update(BURST_PORT=str(port), BURST_WEB_PORT=str(_free_port()),
               BURST_INSTANCE="gateway-two")
    env.pop("BURST_BOOTSTRAP_TOKEN_HASH", None)
    log = open(tmp_path / "gateway2.log", "w")  # noqa: SIM115 (kept by the child)
    second = subprocess.Popen([str(Path(burst_command()[0]).parent / "python"), "-m",
                               "burst_gateway"], env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        ns = cluster.machines.add()
        cluster.join(ns, cluster.bundle("dedup"), "fard")
        cluster.wait_agent("fard")
        app = tmp_path / "dedup.py"
        app.write_text(
            "import burst\n"
            "app = burst.App('dedup')\n"
            "@app.function(cpu=0.5, memory=128)\n"
            "def once(x: int) -> int:\n"
            "    burst.Queue.from_name('dedup-runs', create_if_missing=True).put(x)\n"
            "    return x + 1\n")
        done = burst(cluster.env, "deploy", str(app))
        assert done.returncode == 0, done.stdout + done.stderr
        url2 = f"http://{HOST_ADDR}:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                Client(url2, cluster.client.token, timeout=2).get_json("/healthz")
                break
            except Exception:
                assert time.monotonic() < deadline, (tmp_path / "gateway2.log").read_text()
                time.sleep(0.2)
        # A gateway that does not answer, then a live one: the client moves on to it.
        dead = f"http://127.0.0.1:{_free_port()}"
        both = Client(f"{dead},{url2}", cluster.client.token)
        payload = serialize(((1,), {}))
        assert deserialize(both.call("dedup", "once", payload, wait=60).payload) == 2
        assert both.url == url2
        # The same submission sent to each gateway (as a client does when the first one
        # dies before answering): one call, run once.
        sid = wire.new_submission_id()
        monkeypatch.setattr(wire, "new_submission_id", lambda: sid)
        r1 = Client(cluster.client.url, cluster.client.token).call("dedup", "once",
                                                                   serialize(((5,), {})), wait=60)
        r2 = Client(url2, cluster.client.token).call("dedup", "once", serialize(((5,), {})),
                                                     wait=60)
        assert r1.call_id == r2.call_id
        assert deserialize(r1.payload) == deserialize(r2.payload) == 6
        # and a batch resent: the same calls
        b1 = Client(url2, cluster.client.token).call_batch("dedup", "once",
                                                           [serialize(((7,), {}))] * 3)
        b2 = Client(cluster.client.url, cluster.client.token).call_batch(
            "dedup", "once", [serialize(((7,), {}))] * 3)
        assert [c.call_id for c in b1] == [c.call_id for c in b2]
        assert len({c.call_id for c in b1}) == 3
        counter = tmp_path / "count.py"
        counter.write_text(
            "import burst, time\n"
            "q = burst.Queue.from_name('dedup-runs', create_if_missing=True)\n"
            "got = []\n"
            "deadline = time.monotonic() + 60\n"
            "while len(got) < 5 and time.monotonic() < deadline:\n"
            "    got += q.get_many(10, timeout=1)\n"
            "got += q.get_many(10, timeout=2)\n"
            "print(sorted(got))\n")
        run_env = {**cluster.env, "BURST_URL": cluster.client.url,
                   "BURST_TOKEN": cluster.client.token}
        counted = subprocess.run([str(Path(burst_command()[0]).parent / "python"), str(counter)],
                                 env=run_env, capture_output=True, text=True, timeout=120)
        assert counted.stdout.strip() == "[1, 5, 7, 7, 7]", counted.stdout + counted.stderr
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(20)


def _spawn_and_pick_victim(cluster: Cluster, tmp_path: Path, app_name: str, queue: str,
                           agents: tuple[str, ...], gpu: str, calls: int = 4,
                           sleep: int = 6,
                           ) -> tuple[subprocess.Popen[str], str, dict[str, str]]:
    """Deploy a slow function, spawn ``calls`` calls of it, and return the caller, the
    joined agent that runs one of them (waited for) and the environment of a client."""
    # The control machine's own agent takes no work: what runs, runs on the joined ones.
    cluster.client.post_json("/v1/agents/local/preempt", {})
    app = tmp_path / f"{app_name}.py"
    # A declared GPU type only ``agents`` have: the work runs on them alone (the module's
    # other joined agents stay up).
    app.write_text(APP.replace('"joined"', repr(app_name)).replace('"join-done"', repr(queue))
                   .replace("retries=0)", f"retries=0, gpu={gpu!r})"))
    done = burst(cluster.env, "deploy", str(app))
    assert done.returncode == 0, done.stdout + done.stderr
    script = tmp_path / "calls.py"
    script.write_text(
        "import burst, json, sys\n"
        f"f = burst.Function.from_name({app_name!r}, 'slow')\n"
        f"calls = [f.spawn({sleep}) for _ in range({calls})]\n"
        "print(json.dumps([c.object_id for c in calls]), flush=True)\n"
        "print(json.dumps([c.get(timeout=180) for c in calls]), flush=True)\n"
    )
    run_env = {**cluster.env, "BURST_URL": cluster.client.url,
               "BURST_TOKEN": cluster.client.token}
    caller = subprocess.Popen([str(Path(burst_command()[0]).parent / "python"), str(script)],
                              env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    deadline = time.monotonic() + 90
    victim = ""
    while time.monotonic() < deadline and not victim:
        view = cluster.agents_view()
        busy = {n: sum(c["in_flight"] for c in view[n]["containers"])
                for n in agents if n in view}
        victim = next((n for n, k in busy.items() if k > 0), "")
        time.sleep(0.2)
    assert victim, "no input ran on a joined agent"
    return caller, victim, run_env


def _count_done(run_env: dict[str, str], tmp_path: Path, queue: str) -> int:
    drain = tmp_path / "count.py"
    drain.write_text(
        "import burst\n"
        f"q = burst.Queue.from_name({queue!r}, create_if_missing=True)\n"
        "print(len(q.get_many(100, timeout=2)))\n"
    )
    counted = subprocess.run([str(Path(burst_command()[0]).parent / "python"), str(drain)],
                             env=run_env, capture_output=True, text=True, timeout=60)
    assert counted.returncode == 0, counted.stderr
    return int(counted.stdout.strip())


def test_a_revoked_agent_is_cut_off_its_work_reruns_once_and_its_bundle_cannot_join(
        cluster: Cluster, tmp_path: Path) -> None:
    ns1, ns2 = cluster.machines.add(), cluster.machines.add()
    bundles = {"farr": cluster.bundle("rv-r", "--name", "farr"),
               "farq": cluster.bundle("rv-q", "--name", "farq")}
    # A bundle made for one agent joins as that agent only.
    done = subprocess.run(cluster.join_command(ns1, bundles["farr"], "other"),
                          env=cluster.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "is for agent 'farr' only" in done.stderr, done.stderr
    cluster.join(ns1, bundles["farr"], "farr", "--gpus", "L4:1")
    cluster.join(ns2, bundles["farq"], "farq", "--gpus", "L4:1")
    cluster.wait_agent("farr")
    cluster.wait_agent("farq")
    caller, victim, run_env = _spawn_and_pick_victim(cluster, tmp_path, "revoked",
                                                     "revoke-done", ("farr", "farq"), "L4")
    user = json.loads(bundles[victim].read_text())["user"]
    done = burst(cluster.env, "agent", "revoke", victim)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"NATS user {user}" in done.stdout, done.stdout
    # The server closed its connection: it exits at once (status 3), killing its work.
    proc = cluster.agents[victim]
    proc.wait(30)
    log = (cluster.root / f"agent-{victim}.log").read_text()
    assert proc.returncode == 3, log[-3000:]
    assert "credentials were revoked" in log, log[-3000:]
    # Its inputs ran again on the other agent: every call has one result, and ran to
    # its end once.
    out, err = caller.communicate(timeout=240)
    assert caller.returncode == 0, err[-3000:]
    assert json.loads(out.splitlines()[-1]) == [60, 60, 60, 60]
    assert _count_done(run_env, tmp_path, "revoke-done") == 4
    # Its bundle can never join again, under any name.
    users = json.loads((Path(cluster.env["BURST_HOME"]) / "nats" / "users.json").read_text())
    assert user not in users["users"]
    done = subprocess.run(cluster.join_command(ns1, bundles[victim], victim),
                          env=cluster.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "refused this bundle's credentials" in done.stderr, done.stderr
    # The other agent is undisturbed.
    survivor = "farq" if victim == "farr" else "farr"
    assert cluster.agents[survivor].poll() is None
    assert cluster.agents_view()[survivor]["state"] == "ready"


def test_revoking_an_unknown_agent_or_the_local_one_is_refused(cluster: Cluster) -> None:
    done = burst(cluster.env, "agent", "revoke", "no-such-agent")
    assert done.returncode == 1
    assert "agent 'no-such-agent' is not registered" in done.stderr, done.stderr
    done = burst(cluster.env, "agent", "revoke", "local")
    assert done.returncode == 1
    assert "has no NATS user of its own to revoke" in done.stderr, done.stderr


def test_an_agent_whose_credentials_expire_is_cut_off(cluster: Cluster) -> None:
    """`burst agent token --credential-expires 60s` (room for a slow join on a loaded
    machine): the supervisor removes the user once it expires
    (BURST_CREDENTIAL_CHECK_INTERVAL), NATS reloads, the agent exits."""
    ns = cluster.machines.add()
    bundle = cluster.bundle("exp", "--name", "fare", "--credential-expires", "60s")
    doc = json.loads(bundle.read_text())
    assert doc["credential_expires_at"] - doc["issued_at"] == 60
    cluster.join(ns, bundle, "fare")
    cluster.wait_agent("fare")
    proc = cluster.agents["fare"]
    proc.wait(max(0.0, doc["credential_expires_at"] - time.time()) + 60)
    log = (cluster.root / "agent-fare.log").read_text()
    assert proc.returncode == 3, log[-3000:]
    assert time.time() >= doc["credential_expires_at"]
    users = json.loads((Path(cluster.env["BURST_HOME"]) / "nats" / "users.json").read_text())
    assert doc["user"] not in users["users"]
    supervisor = (Path(cluster.env["BURST_HOME"]) / "logs" / "supervisor.log").read_text()
    assert f"agent credentials expired: removed NATS user {doc['user']}" in supervisor
    done = subprocess.run(cluster.join_command(ns, bundle, "fare"), env=cluster.env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "its credentials expired" in done.stderr, done.stderr


DOCKER_APP = """
import os, socket
import burst

app = burst.App("joined-docker")

@app.function(gpu="H100", cpu=0.5, memory=256, scaledown_window=5)
def where(x: int) -> dict:
    return {"x": x * 2, "docker": os.path.exists("/.dockerenv"),
            "container": os.environ["BURST_CONTAINER_ID"]}
"""


def test_a_joined_agent_on_the_docker_runtime_runs_a_call(cluster: Cluster,
                                                          tmp_path: Path) -> None:
    """An agent joined with `--runtime docker` (on the same engine as this machine's:
    the stand-in machine shares its filesystem) builds the function's image and runs a
    call in a Docker container. Its declared GPU makes it the only agent that fits."""
    from tests.e2e.test_runtimes import docker_missing

    if why := docker_missing():
        if os.environ.get("CI"):
            pytest.fail(f"{why}, and CI is set")
        pytest.skip(why)
    # The shim's wheel is built where the package index is reachable (the stand-in
    # machine has no route off this one; a real one builds it itself): the machine-wide
    # cache the agent looks in first, the same directory here and there.
    from burst_agent.runtimes.docker import cached_wheels

    cached_wheels()
    ns = cluster.machines.add()
    cluster.join(ns, cluster.bundle("dk", "--name", "fardk"), "fardk", "--runtime", "docker",
                 "--gpus", "H100:1")
    joined = cluster.wait_agent("fardk", timeout=120)
    assert joined["runtime"] == "docker" and joined["hostname"] == "host-fardk", joined
    app = tmp_path / "joined_docker.py"
    app.write_text(DOCKER_APP)
    done = burst(cluster.env, "deploy", str(app), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    script = tmp_path / "call.py"
    script.write_text(
        "import burst, json\n"
        "f = burst.Function.from_name('joined-docker', 'where')\n"
        "print(json.dumps(f.remote(21)))\n")
    run_env = {**cluster.env, "BURST_URL": cluster.client.url,
               "BURST_TOKEN": cluster.client.token}
    called = subprocess.run([str(Path(burst_command()[0]).parent / "python"), str(script)],
                            env=run_env, capture_output=True, text=True, timeout=420)
    log = (cluster.root / "agent-fardk.log").read_text()
    assert called.returncode == 0, called.stderr[-3000:] + log[-3000:]
    got = json.loads(called.stdout.splitlines()[-1])
    assert got["x"] == 42 and got["docker"] is True, got
    assert got["container"] in log  # it ran on the joined agent
