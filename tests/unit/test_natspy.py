"""The installed nats-py has every private attribute burst_core.bus._natspy uses."""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from burst_core.bus import _natspy


def _resolve(path: str) -> Any:
    module, qualname = path.split(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


async def _instances() -> dict[str, Any]:
    """Real nats-py objects (unconnected) for each class REQUIRED names."""
    nc = NATS()
    js = nc.jetstream()
    sub = Subscription(nc, 1, "s")
    jsi = JetStreamContext._JSI(js=js, conn=nc, stream="S", ordered=True, psub=sub,
                                sub=None, ccreq=None)
    kv = KeyValue(name="b", stream="KV_b", pre="$KV.b.", js=js, direct=False)
    return {
        "nats.aio.client:Client": nc,
        "nats.aio.subscription:Subscription": sub,
        "nats.js.client:JetStreamContext._JSI": jsi,
        "nats.js.client:JetStreamContext": js,
        "nats.js.manager:JetStreamManager": js._jsm,
        "nats.js.kv:KeyValue": kv,
        "nats.js.kv:KeyValue.KeyWatcher": KeyValue.KeyWatcher(kv),
        "nats.aio.msg:Msg.Metadata": Msg.Metadata,
    }


@pytest.mark.parametrize("cls", sorted(_natspy.REQUIRED))
def test_installed_natspy_has_every_private_attribute_used(cls: str) -> None:
    _resolve(cls)  # the class itself is there
    obj = asyncio.run(_instances())[cls]
    missing = [a for a in _natspy.REQUIRED[cls] if not hasattr(obj, a)]
    assert not missing, (f"the installed nats-py's {cls} lacks {', '.join(missing)}, which "
                         "burst_core/bus/_natspy.py uses: adapt that module or pin nats-py")


def test_every_class_with_instances_is_checked() -> None:
    assert set(asyncio.run(_instances())) == set(_natspy.REQUIRED)


def test_a_missing_attribute_is_named() -> None:
    """The check names what is missing (as it would after a nats-py upgrade)."""
    required = dict(_natspy.REQUIRED)
    _natspy.REQUIRED["nats.aio.client:Client"] += ("_no_such_attribute",)
    try:
        with pytest.raises(AssertionError, match="lacks _no_such_attribute"):
            test_installed_natspy_has_every_private_attribute_used("nats.aio.client:Client")
    finally:
        _natspy.REQUIRED.clear()
        _natspy.REQUIRED.update(required)
