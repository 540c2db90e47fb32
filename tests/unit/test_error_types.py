"""The error table of burst.exception: wire names, statuses, and both directions derived
from it, as the gateway answers and the SDK raises."""

from __future__ import annotations

import inspect

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from burst import exception
from burst.exception import ERROR_TYPES, STATUS_TYPES, Error, from_api, status_of, type_of_status
from burst_gateway import errors

#: The wire contract: the SDK, older clients and the API's users match on these names.
WIRE = {
    "InvalidInput": 400, "Unauthenticated": 401, "BudgetExceeded": 402,
    "PermissionDenied": 403, "NotFound": 404, "Conflict": 409, "PayloadTooLarge": 413,
    "IdempotencyKeyReused": 422, "ResourceExhausted": 429, "Internal": 500,
    "Unavailable": 503, "RemoteError": 500, "ExecutionError": 500, "FunctionTimeout": 504,
    "Cancelled": 409, "Deadlock": 409,
}

#: The web framework's statuses for a request it refused (wrong method, media type, body).
_REFUSED = (405, 415, 422)


def test_the_wire_names_and_statuses_are_unchanged() -> None:
    assert {t: status for t, (status, _) in ERROR_TYPES.items()} == WIRE


def test_every_error_class_has_a_row_named_by_its_type() -> None:
    classes = {c for _, c in inspect.getmembers(exception, inspect.isclass)
               if issubclass(c, Error) and c is not Error}
    assert {cls for _, cls in ERROR_TYPES.values()} == classes
    for type_, (_, cls) in ERROR_TYPES.items():
        assert cls.type == type_


@pytest.mark.parametrize("type_", sorted(WIRE))
def test_each_type_round_trips_through_its_status_and_class(type_: str) -> None:
    status, cls = ERROR_TYPES[type_]
    assert status_of(type_) == status
    err = from_api(type_, "the message")
    assert type(err) is cls and err.type == type_ and str(err) == "the message"
    if status not in _REFUSED:  # the type a bare status means has that same status
        assert status_of(type_of_status(status)) == status


def test_each_status_round_trips_and_shared_statuses_mean_the_first_row() -> None:
    for status, type_ in STATUS_TYPES.items():
        if status in _REFUSED:
            assert type_ == "InvalidInput"
        else:
            assert status_of(type_) == status
    assert type_of_status(409) == "Conflict" and type_of_status(500) == "Internal"
    assert type_of_status(418) == "Internal" and status_of("NoSuchType") == 500
    assert isinstance(from_api("NoSuchType", "m"), Error)


class _Body(BaseModel):
    n: int


def _app() -> FastAPI:
    app = FastAPI()
    errors.install(app)

    @app.get("/raise/{type_}")
    async def _raise(type_: str) -> None:
        raise ERROR_TYPES[type_][1]("from the route")

    @app.get("/status/{status}")
    async def _status(status: int) -> None:
        raise HTTPException(status, "from the framework")

    @app.post("/body")
    async def _body(body: _Body) -> int:
        return body.n

    return app


def test_the_gateway_answers_each_error_with_its_type_and_status_and_the_sdk_raises_it() -> None:
    client = TestClient(_app())
    for type_, (status, cls) in ERROR_TYPES.items():
        r = client.get(f"/raise/{type_}")
        assert r.status_code == status
        assert r.json() == {"error": {"type": type_, "message": "from the route"}}
        assert type(from_api(**{"type_": type_, "message": r.json()["error"]["message"]})) is cls
    for status, type_ in STATUS_TYPES.items():
        r = client.get(f"/status/{status}")
        assert (r.status_code, r.json()["error"]["type"]) == (status, type_)
    r = client.post("/status/404")  # a method the route does not take
    assert (r.status_code, r.json()["error"]["type"]) == (405, "InvalidInput")
    r = client.get("/no/such/route")
    assert (r.status_code, r.json()["error"]["type"]) == (404, "NotFound")
    r = client.post("/body", json={"n": "x"})  # FastAPI's validation
    assert (r.status_code, r.json()["error"]["type"]) == (400, "InvalidInput")
