"""nats-server's configuration for a cluster others join, and join bundles."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from burst import _natsconf
from burst.exception import InvalidError
from tests.servers import nats_binary


@pytest.mark.parametrize("secure", [False, True])
def test_the_configuration_is_one_nats_server_accepts(tmp_path: Path, secure: bool) -> None:
    binary = nats_binary()
    if not binary:
        pytest.skip("nats-server not installed: run `make install`")
    conf = _natsconf.write_nats_config(tmp_path, host="127.0.0.1", port=4999, monitor_port=8999,
                                       server_name="t", secure=secure)
    text = conf.read_text()
    assert ("authorization" in text) == secure and ("tls" in text) == secure
    if secure:
        assert '"$KV.burst_tokens.>"' in text and _natsconf.LOCAL_AGENT_USER in text
    checked = subprocess.run([binary, "-c", str(conf), "-t"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # a new agent user is in the configuration written again
    _natsconf.ensure_tls(tmp_path, ["127.0.0.1"])
    doc = _natsconf.make_bundle(tmp_path, ["tls://127.0.0.1:4999"], 60)
    assert (doc["user"] in _natsconf.rewrite_nats_config(tmp_path)[0].read_text()) == secure


def test_bundles_are_checked(tmp_path: Path) -> None:
    _natsconf.ensure_tls(tmp_path, ["127.0.0.1"])
    doc = _natsconf.make_bundle(tmp_path, ["tls://127.0.0.1:4999"], 60)
    path = tmp_path / "b.json"
    path.write_text(json.dumps(doc))
    assert _natsconf.open_bundle(path)["user"] == doc["user"]
    with pytest.raises(InvalidError, match="expired"):
        _natsconf.open_bundle(path, now=time.time() + 120)
    path.write_text(json.dumps({**doc, "nats_urls": ["tls://evil:1"]}))
    with pytest.raises(InvalidError, match="was altered"):
        _natsconf.open_bundle(path)
    path.write_text("{")
    with pytest.raises(InvalidError, match="is not JSON"):
        _natsconf.open_bundle(path)
    path.write_text(json.dumps({k: v for k, v in doc.items() if k != "password"}))
    with pytest.raises(InvalidError, match="'password' is missing"):
        _natsconf.open_bundle(path)


def test_listen_needs_an_address_of_this_machine() -> None:
    assert _natsconf.check_listen("127.0.0.1") == "127.0.0.1"
    with pytest.raises(InvalidError, match="this machine has no such address"):
        _natsconf.check_listen("10.213.250.9")
    with pytest.raises(InvalidError, match="invalid --listen 'not-an-ip'"):
        _natsconf.check_listen("not-an-ip")


def test_a_bundle_for_one_agent_binds_its_user_on_the_control_side(tmp_path: Path) -> None:
    _natsconf.ensure_tls(tmp_path, ["127.0.0.1"])
    doc = _natsconf.make_bundle(tmp_path, ["tls://127.0.0.1:4999"], 60, agent="gpu1")
    other = _natsconf.make_bundle(tmp_path, ["tls://127.0.0.1:4999"], 60)
    assert doc["agent"] == "gpu1" and "agent" not in other
    assert _natsconf.users_of_agent(tmp_path, "gpu1") == [doc["user"]]
    assert _natsconf.users_of_agent(tmp_path, "gpu2") == []
    # the binding is signed: a bundle rebound to another name is refused
    path = tmp_path / "b.json"
    path.write_text(json.dumps({**doc, "agent": "gpu2"}))
    with pytest.raises(InvalidError, match="was altered"):
        _natsconf.open_bundle(path)
    # removed users are gone from the users (never the services' or the local agent's)
    assert _natsconf.remove_users(tmp_path, [doc["user"], _natsconf.SERVICES_USER,
                                             _natsconf.LOCAL_AGENT_USER]) == [doc["user"]]
    users = _natsconf.read_users(tmp_path)["users"]
    assert doc["user"] not in users and other["user"] in users
    assert _natsconf.SERVICES_USER in users and _natsconf.LOCAL_AGENT_USER in users


def test_credentials_that_expire(tmp_path: Path) -> None:
    _natsconf.ensure_tls(tmp_path, ["127.0.0.1"])
    now = time.time()
    short = _natsconf.make_bundle(tmp_path, ["tls://127.0.0.1:4999"], 600, credential_ttl=30)
    forever = _natsconf.make_bundle(tmp_path, ["tls://127.0.0.1:4999"], 600)
    assert _natsconf.expired_users(tmp_path, now) == []
    assert _natsconf.expired_users(tmp_path, now + 31) == [short["user"]]
    assert forever["user"] not in _natsconf.expired_users(tmp_path, now + 9e9)
    path = tmp_path / "b.json"
    path.write_text(json.dumps(short))
    assert _natsconf.open_bundle(path)["user"] == short["user"]
    with pytest.raises(InvalidError, match="its credentials expired"):
        _natsconf.open_bundle(path, now=now + 60)
