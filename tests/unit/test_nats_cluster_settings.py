"""Settings and arguments of a three-node NATS cluster: BURST_REPLICAS,
BURST_NATS_RETRY_FOR, several NATS URLs, and `burst up --nats-cluster`'s ports and
nats-server arguments."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from burst import _natsconf
from burst._cluster import (
    DEFAULT_PORTS,
    check_listen_nodes,
    cluster_ports,
    nats_cluster_conf,
    nats_nodes,
    nats_urls,
    service_env,
    service_parts,
)
from burst.exception import InvalidError
from burst_core.bus import Topology, default_replicas
from burst_core.bus.connection import server_urls
from burst_core.bus.retry import retry_for, transient
from tests.servers import nats_binary


def test_replicas_default_to_one_and_follow_the_setting() -> None:
    assert default_replicas({}) == 1
    assert default_replicas({"BURST_REPLICAS": "3"}) == 3


def test_topology_takes_its_replicas_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BURST_REPLICAS", "3")
    assert Topology().replicas == 3


@pytest.mark.parametrize("bad", ["2", "three", "0", "7"])
def test_a_bad_replica_count_is_named_with_the_allowed_ones(bad: str) -> None:
    with pytest.raises(ValueError, match=f"BURST_REPLICAS={bad!r}.*1, 3, 5"):
        default_replicas({"BURST_REPLICAS": bad})


def test_retry_window_setting() -> None:
    assert retry_for({}) == 6.0
    assert retry_for({"BURST_NATS_RETRY_FOR": "30"}) == 30.0
    for bad in ("0", "-2", "soon", "inf"):
        with pytest.raises(ValueError, match=f"BURST_NATS_RETRY_FOR={bad!r}"):
            retry_for({"BURST_NATS_RETRY_FOR": bad})


def test_what_an_election_answers_is_transient() -> None:
    import nats.errors
    import nats.js.errors

    assert transient(nats.errors.TimeoutError())
    assert transient(nats.errors.NoRespondersError())
    assert transient(nats.js.errors.ServiceUnavailableError())
    assert transient(nats.js.errors.APIError(err_code=10008))
    assert not transient(nats.js.errors.BadRequestError(err_code=10058))
    assert not transient(ValueError("x"))


def test_several_nats_urls() -> None:
    assert server_urls("nats://a:1") == ["nats://a:1"]
    assert server_urls("nats://a:1, nats://b:2,") == ["nats://a:1", "nats://b:2"]
    with pytest.raises(ValueError, match="names no NATS server"):
        server_urls(" , ")
    with pytest.raises(ValueError, match="'http://a:1' is not a NATS server URL"):
        server_urls("nats://a:1,http://a:1")


def test_three_nodes_get_ports_routes_and_replicas(tmp_path: Path) -> None:
    ports = cluster_ports(DEFAULT_PORTS, 3)
    assert nats_nodes(ports) == 3 and nats_nodes(dict(DEFAULT_PORTS)) == 1
    assert len(set(ports.values())) == len(ports)  # no port twice
    urls = nats_urls(ports).split(",")
    assert urls == [f"nats://127.0.0.1:{ports[r]}" for r in ("nats", "nats_2", "nats_3")]
    block = nats_cluster_conf(ports, 2)
    assert 'name: "burst"' in block
    assert f'listen: "127.0.0.1:{ports["nats_route_2"]}"' in block
    assert (f'routes: ["nats://127.0.0.1:{ports["nats_route_1"]}", '
            f'"nats://127.0.0.1:{ports["nats_route_3"]}"]') in block
    assert nats_cluster_conf(dict(DEFAULT_PORTS), 1) == ""
    assert service_parts(ports) == ["scheduler", "billing", "gateway", "agent", "gateway-2",
                                    "scheduler-2"]
    env = service_env(tmp_path, ports)
    assert env["BURST_REPLICAS"] == "3" and env["BURST_NATS_URL"] == nats_urls(ports)
    assert "BURST_REPLICAS" not in service_env(tmp_path, dict(DEFAULT_PORTS))


def test_a_nodes_configuration_is_one_nats_server_accepts(tmp_path: Path) -> None:
    binary = nats_binary()
    if not binary:
        pytest.skip("nats-server not installed: run `make install`")
    ports = cluster_ports(DEFAULT_PORTS, 3)
    conf = _natsconf.write_nats_config(
        tmp_path, "nats-2", host="127.0.0.1", port=ports["nats_2"],
        monitor_port=ports["nats_monitor_2"], server_name="burst-n2", secure=False,
        extra=nats_cluster_conf(ports, 2), store_dir=str(tmp_path / "n2"))
    assert conf.name == "nats-2.conf" and str(tmp_path / "n2") in conf.read_text()
    checked = subprocess.run([binary, "-c", str(conf), "-t"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_listen_with_a_nats_cluster_is_refused() -> None:
    check_listen_nodes("", 3)
    check_listen_nodes("10.0.0.5", 1)
    with pytest.raises(InvalidError, match="--listen 10.0.0.5 cannot be used with "
                       "--nats-cluster 3"):
        check_listen_nodes("10.0.0.5", 3)


@pytest.mark.parametrize("bad", [0, 2, 5])
def test_an_unsupported_node_count_is_named(bad: int) -> None:
    with pytest.raises(InvalidError, match=f"invalid --nats-cluster {bad}: use 1 or 3"):
        cluster_ports(DEFAULT_PORTS, bad)
