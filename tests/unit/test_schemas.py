from __future__ import annotations

import msgspec
import pytest

from burst_core import names, schemas
from burst_core.schemas import (
    AgentOrderDecoder,
    ContainerEventDecoder,
    Input,
    InputDecoder,
    Placement,
    Resources,
    StopContainer,
    encode,
)


def _input(**kw: object) -> Input:
    base = dict(workspace="w", app="a", function="f", call_id="fc-1", input_id="in-1",
                attempt=2, attempt_token="t", payload=b"\x00\x01", accepted_at=1.5)
    base.update(kw)
    return Input(**base)  # type: ignore[arg-type]


def test_roundtrip_keeps_every_field() -> None:
    inp = _input()
    assert InputDecoder.decode(encode(inp)) == inp


def test_unknown_fields_are_ignored() -> None:
    raw = msgspec.msgpack.decode(encode(_input()))
    raw["added_in_a_future_version"] = {"x": 1}
    assert InputDecoder.decode(msgspec.msgpack.encode(raw)).call_id == "fc-1"


def test_new_fields_have_defaults_so_old_messages_decode() -> None:
    raw = msgspec.msgpack.decode(encode(_input()))
    raw.pop("deployment_id", None)
    raw.pop("attempt")
    decoded = InputDecoder.decode(msgspec.msgpack.encode(raw))
    assert decoded.attempt == 1 and decoded.deployment_id == ""


def test_messages_are_tagged_and_unions_decode_by_tag() -> None:
    spec = schemas.FunctionSpec(name="f", module="m", qualname="f")
    p = Placement(container_id="ct-1", agent_id="a1", workspace="w", app="a", deployment_id="d",
                  bundle_hash="h", function=spec, resources=Resources(cpu=1, memory_mb=256,
                  gpu_type="H100", gpu_count=2), gpu_indices=[0, 1], placed_at=1.0)
    s = StopContainer(container_id="ct-1", agent_id="a1", if_idle_since=3.0)
    assert AgentOrderDecoder.decode(encode(p)) == p
    assert AgentOrderDecoder.decode(encode(s)) == s
    assert msgspec.msgpack.decode(encode(s))["type"] == "StopContainer"
    with pytest.raises(msgspec.ValidationError):
        ContainerEventDecoder.decode(encode(s))  # a stop order is not a lifecycle event


def test_resources_default_to_modals() -> None:
    r = Resources()
    assert (r.cpu, r.memory_mb, r.gpu_type, r.gpu_count) == (0.125, 128, None, 0)


def test_schemas_carry_the_fields_later_work_needs() -> None:
    fields = {f for f in Input.__struct_fields__}
    assert {"workspace", "call_id", "input_id", "attempt", "attempt_token"} <= fields
    assert "spot" in Placement.__struct_fields__ and "resources" in Placement.__struct_fields__
    assert {"container_id", "interval"} <= set(schemas.MeteringRecord.__struct_fields__)


def test_names_validate_identifiers() -> None:
    assert names.check_ident("app", "my-app_2") == "my-app_2"
    for bad in ("", "Upper", "has.dot", "has space", "-lead", "a" * 64, "x>", "x*", "x\n",
                "\nx", "é"):
        with pytest.raises(ValueError, match="invalid app name"):
            names.check_ident("app", bad)


def test_a_long_bad_name_is_quoted_by_its_start_and_length() -> None:
    with pytest.raises(ValueError) as e:
        names.check_ident("function", "f" * 100_000)
    msg = str(e.value)
    assert msg.startswith("invalid function name 'ffff") and "(100000 characters)" in msg
    assert names.IDENT_RULE in msg and len(msg) < 300


def test_subjects_and_consumers() -> None:
    key = names.function_key("ws", "app", "fn")
    assert names.input_subject(key) == "burst.inputs.ws.app.fn"
    assert names.output_subject("fc-1", 2) == "burst.outputs.fc-1.2"
    consumer = names.function_consumer(key)
    assert consumer.startswith("fn_") and "." not in consumer
    assert consumer != names.function_consumer(names.function_key("ws", "app", "fn2"))
    assert names.input_subject(key).startswith(names.SUBJECTS_INPUTS[:-1])
    assert names.redis_pool_key(key).startswith(names.REDIS_PREFIX)
