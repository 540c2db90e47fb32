"""Load on a three-node NATS cluster while its nodes are killed, one at a time.

Shared by ``bench/ha.py`` and ``tests/e2e/test_nats_cluster.py``. A cluster from
``burst up --nats-cluster 3`` runs an app whose function appends the tag it is given to a
file and returns it; a loop of calls (``spawn`` then ``get``, one after another) and a
loop of maps run in threads while :func:`kill_node` SIGKILLs a NATS node (`burst up`'s
supervisor starts it again on the same ports and store) and waits until every node is
healthy and every stream's replicas are current again.

Measured: the gap in service, the longest time between two answered calls of the call
loop around a kill; checked: every call whose submission was acknowledged (``spawn``
returned) gets exactly one result, and every tag ran exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INPUTS = "BURST_INPUTS"

APP = '''
import burst

app = burst.App("ha")


@app.function(scaledown_window=600)
def echo(path, tag):
    with open(path, "a") as f:
        f.write(tag + "\\n")
    return tag
'''


def _state(home: Path) -> dict[str, Any]:
    return json.loads((home / "cluster.json").read_text())  # type: ignore[no-any-return]


def nodes(home: Path) -> dict[str, dict[str, Any]]:
    """NATS node server name (``burst-nI``) -> its part in cluster.json."""
    parts = [p for p in _state(home)["parts"] if p["name"].startswith("nats")]
    return {("burst-n1" if p["name"] == "nats" else f"burst-n{p['name'].split('-')[1]}"): p
            for p in parts}


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as r:
        return json.loads(r.read())


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _views(home: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Node -> stream name -> the stream's cluster info as that node sees it."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for server, part in nodes(home).items():
        try:
            d = _get(f"http://127.0.0.1:{part['ports']['monitor']}/jsz?streams=true")
        except OSError:
            continue
        out[server] = {s["name"]: s.get("cluster") or {} for a in d.get("account_details") or []
                       for s in a.get("stream_detail") or []}
    return out


def stream_leader(home: Path, stream: str = INPUTS) -> str:
    for view in _views(home).values():
        if leader := view.get(stream, {}).get("leader"):
            return str(leader)
    return ""


def caught_up(home: Path) -> bool:
    """Every node answers its health check, and every stream has a leader that sees both
    its other replicas current (only the leader's view of them counts)."""
    if not all(_healthy(p["ports"]["monitor"]) for p in nodes(home).values()):
        return False
    views = _views(home)
    if len(views) != len(nodes(home)):
        return False
    names = {name for view in views.values() for name in view}
    for name in names:
        leader = next((v[name]["leader"] for v in views.values()
                       if v.get(name, {}).get("leader")), "")
        mine = views.get(leader, {}).get(name, {})
        if mine.get("leader") != leader or len(mine.get("replicas") or []) != 2 \
                or not all(r.get("current") for r in mine["replicas"]):
            return False
    return bool(names)


def wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.1)


def kill_node(home: Path, server: str, timeout: float = 90.0) -> dict[str, float]:
    """SIGKILL NATS node ``server``; wait for the supervisor to restart it and for the
    cluster to catch up. Returns the kill's time and seconds until caught up."""
    part = nodes(home)[server]
    t0 = time.time()
    os.kill(part["pid"], signal.SIGKILL)
    wait(lambda: nodes(home)[server]["pid"] != part["pid"], timeout,
         f"{part['name']} restarted by the supervisor")
    wait(lambda: caught_up(home), timeout, "every node healthy and every stream current")
    return {"killed_at": t0, "caught_up_s": round(time.time() - t0, 3)}


@dataclass
class Load:
    """The call loop and the map loop, in threads, until :meth:`stop`."""

    fn: Any
    path: Path
    map_size: int = 20
    stop_event: threading.Event = field(default_factory=threading.Event)
    #: Wall times at which a call of the call loop was answered.
    answered: list[float] = field(default_factory=list)
    #: tag -> result of every acknowledged call and answered map input.
    results: dict[str, list[Any]] = field(default_factory=dict)
    acked: list[str] = field(default_factory=list)
    unacked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    maps_done: int = 0
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        self.threads = [threading.Thread(target=self._calls, daemon=True),
                        threading.Thread(target=self._maps, daemon=True)]
        for t in self.threads:
            t.start()
        return self

    def _calls(self) -> None:
        k = 0
        while not self.stop_event.is_set():
            tag = f"c{k}"
            k += 1
            try:
                call = self.fn.spawn(str(self.path), tag)
            except Exception as e:  # not acknowledged: allowed to fail, never to run twice
                self.unacked.append(tag)
                self.errors.append(f"spawn {tag}: {e!r}")
                time.sleep(0.05)
                continue
            self.acked.append(tag)
            try:
                self.results.setdefault(tag, []).append(call.get(timeout=120))
                self.answered.append(time.time())
            except Exception as e:
                self.errors.append(f"get {tag}: {e!r}")

    def _maps(self) -> None:
        r = 0
        while not self.stop_event.is_set():
            tags = [f"m{r}-{j}" for j in range(self.map_size)]
            r += 1
            try:
                for tag, out in zip(tags, self.fn.map([str(self.path)] * len(tags), tags),
                                    strict=True):
                    self.results.setdefault(tag, []).append(out)
                self.maps_done += 1
            except Exception as e:
                self.errors.append(f"map {r}: {e!r}")

    def stop(self, timeout: float = 150.0) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout)

    def gap(self, since: float, until: float) -> float:
        """The longest time without an answered call of the call loop in [since, until]."""
        times = [since, *(t for t in self.answered if since < t < until), until]
        return round(max(b - a for a, b in zip(times, times[1:], strict=False)), 3)

    def executions(self) -> Counter[str]:
        return Counter(self.path.read_text().split()) if self.path.exists() else Counter()

    def check(self) -> list[str]:
        """What went wrong: an acknowledged call without exactly one right result, a
        wrong result, a tag that ran more than once (or an answered one never)."""
        problems: list[str] = []
        runs = self.executions()
        for tag in self.acked:
            got = self.results.get(tag, [])
            if got != [tag]:
                problems.append(f"acknowledged call {tag} got {got!r}")
        for tag, got in self.results.items():
            if got != [tag]:
                problems.append(f"{tag} answered {got!r}")
            if runs[tag] != 1:
                problems.append(f"{tag} ran {runs[tag]} times")
        problems += [f"{tag} ran {n} times" for tag, n in runs.items()
                     if n > 1 and tag not in self.results]
        return problems
