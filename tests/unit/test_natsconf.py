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
    assert (doc["user"] in _natsconf.rewrite_nats_config(tmp_path).read_text()) == secure


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
