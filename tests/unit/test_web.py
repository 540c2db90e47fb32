"""Web endpoint declarations: labels, uniqueness, the spec a deployment carries."""

from __future__ import annotations

import pytest

import burst
from burst import wire
from burst.exception import InvalidError

app = burst.App("labels")


@app.function()
@burst.asgi_app(label="same")
def one() -> None: ...


def two() -> None: ...


@app.cls()
class Model:
    @burst.fastapi_endpoint(method="post", docs=True)
    def predict(self, x: int) -> int:
        return x


def test_a_label_that_is_not_url_safe_is_refused() -> None:
    for bad in ("Not_OK", "-x", "a.b", "x" * 64, ""):
        with pytest.raises(InvalidError, match="invalid web endpoint label"):
            burst.fastapi_endpoint(label=bad)


def test_two_endpoints_with_one_label_are_refused() -> None:
    burst.wsgi_app(label="same")(two)
    with pytest.raises(InvalidError, match="two web endpoints answer under 'same'"):
        app.function()(two)
    assert "two" not in app.registered_functions


def test_specs_carry_the_endpoints() -> None:
    assert one.spec.web == [wire.WebEndpoint(kind="asgi", name="same", label="same")]
    assert Model.spec.web == [wire.WebEndpoint(kind="fastapi", name="model-predict",
                                               method="predict", http_method="POST",
                                               docs=True)]


def test_an_app_factory_that_is_async_or_takes_parameters_is_refused_when_decorated() -> None:
    async def factory():  # returns a coroutine, not an app
        return None

    def needs(x):
        return x

    with pytest.raises(InvalidError, match="is async: make it a plain def"):
        burst.asgi_app()(factory)
    with pytest.raises(InvalidError, match="is async"):
        burst.wsgi_app()(factory)
    for deco in (burst.asgi_app(), burst.wsgi_app(), burst.web_server(8000)):
        with pytest.raises(InvalidError, match=r"takes parameters \(x\)"):
            deco(needs)

    class Model:
        def web(self, flag: bool = False):  # self and defaults are fine
            return flag

    burst.asgi_app()(Model.web)
    with pytest.raises(InvalidError, match="is async: make it a plain def that starts"):
        burst.web_server(8000)(factory)


def test_bad_method_and_missing_parentheses() -> None:
    with pytest.raises(InvalidError, match="method='FETCH' is not an HTTP method"):
        burst.fastapi_endpoint(method="FETCH")
    with pytest.raises(InvalidError, match="parentheses"):
        burst.asgi_app(one)


def test_the_gateway_refuses_one_url_for_two_endpoints_at_deploy() -> None:
    from burst_gateway import web

    fns = [wire.FunctionSpec(name=n, module="m", qualname=n,
                             web=[wire.WebEndpoint(kind="asgi", name="x", label="x")])
           for n in ("a", "b")]
    with pytest.raises(ValueError, match="both answer under 'x'"):
        web.check_endpoints("app", fns)
    fns[1].web[0] = wire.WebEndpoint(kind="asgi", name="Bad_Label", label="Bad_Label")
    with pytest.raises(ValueError, match="invalid web endpoint label"):
        web.check_endpoints("app", fns)


def test_web_server_checks_its_port_and_startup_timeout() -> None:
    with pytest.raises(InvalidError, match="port=0 is out of range"):
        burst.web_server(0)
    with pytest.raises(InvalidError, match="startup_timeout=-1 is out of range"):
        burst.web_server(8000, startup_timeout=-1)

    def serve() -> None: ...

    burst.web_server(8000, startup_timeout=3)(serve)
    from burst import web

    ep = web.endpoint_of(serve, "serve")
    assert ep is not None and (ep.kind, ep.port, ep.startup_timeout) == ("web_server", 8000, 3.0)


def test_nothing_listening_is_a_startup_error_naming_the_port() -> None:
    import socket

    from burst._shim import web_server

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TimeoutError, match=f"nothing listens on port {port} within 0.2 s"):
        web_server.wait_listening(port, 0.2)


def test_host_forms_labels_and_truncation() -> None:
    from burst_gateway import web
    from burst_gateway.settings import GatewaySettings

    fn_ep = wire.WebEndpoint(kind="fastapi", name="my_fn")
    labeled = wire.WebEndpoint(kind="asgi", name="api", label="api")
    assert web.host_label("ws", "app", fn_ep) == "ws--app-my-fn"
    assert web.host_label("ws", "app", labeled) == "ws--api"
    long = web.host_label("ws", "a" * 60, fn_ep)
    assert len(long) == 63 and long.startswith("ws--" + "a" * 52) and long[-7] == "-"
    assert long != web.host_label("ws", "a" * 61, fn_ep)  # the hash tells them apart
    s = GatewaySettings(web_port=9000, web_domain="web.example.com")
    assert web.url_of(s, "ws", "app", "api", labeled) == "http://ws--api.web.example.com:9000"
    s.web_url = "https://edge.example.com"
    assert web.url_of(s, "ws", "app", "api", labeled) == "https://ws--api.web.example.com"
    assert web.url_of(GatewaySettings(web_port=9000), "ws", "app", "api", labeled) == (
        "http://127.0.0.1:9000/ws/app/api")
    # Behind a proxy (BURST_WEB_URL), the path form starts with the visible base.
    proxied = GatewaySettings(web_port=9000, web_url="https://edge.example.com/burst/")
    assert web.url_of(proxied, "ws", "app", "api", labeled) == (
        "https://edge.example.com/burst/ws/app/api")


def test_resolve_host_and_host_conflicts() -> None:
    from burst.exception import ConflictError
    from burst_core.schemas import DeploymentRecord
    from burst_gateway import web
    from burst_gateway.settings import GatewaySettings

    ep = wire.WebEndpoint(kind="asgi", name="api", label="api")
    fn = wire.FunctionSpec(name="f", module="m", qualname="f", web=[ep])
    dep = DeploymentRecord(workspace="ws", app="one", deployment_id="d", bundle_hash="h",
                           functions=[fn], created_at=0.0)
    assert web.resolve_host("WS--api.Web.Test.", "web.test", [dep]) == (dep, fn, ep)
    assert web.resolve_host("ws--other.web.test", "web.test", [dep]) is None
    assert web.resolve_host("ws--api.elsewhere", "web.test", [dep]) is None
    s = GatewaySettings(web_domain="web.test")
    with pytest.raises(ConflictError, match="host ws--api.web.test is taken by app 'one'"):
        web.check_hosts(s, "ws", "two", [fn], [dep])
    web.check_hosts(s, "ws", "one", [fn], [dep])  # its own redeploy
    web.check_hosts(GatewaySettings(), "ws", "two", [fn], [dep])  # path form only


def test_two_endpoints_of_one_app_on_one_host_are_refused() -> None:
    """greeter_greet and Greeter.greet (or a label spelled like an app's endpoint) differ
    in the path form but share a host name: refused at deploy when host forms are on."""
    from burst_gateway import web
    from burst_gateway.settings import GatewaySettings

    plain = wire.FunctionSpec(name="greeter_greet", module="m", qualname="greeter_greet",
                              web=[wire.WebEndpoint(kind="fastapi", name="greeter_greet")])
    method = wire.FunctionSpec(name="Greeter", module="m", qualname="Greeter",
                               web=[wire.WebEndpoint(kind="fastapi", name="greeter-greet")])
    labeled = wire.FunctionSpec(name="f", module="m", qualname="f", web=[wire.WebEndpoint(
        kind="asgi", name="app-greeter-greet", label="app-greeter-greet")])
    s = GatewaySettings(web_domain="web.test")
    for pair in ([plain, method], [method, labeled]):
        with pytest.raises(InvalidError, match=r"would both answer at "
                           r"ws--app-greeter-greet\.web\.test"):
            web.check_hosts(s, "ws", "app", pair, [])
    web.check_hosts(GatewaySettings(), "ws", "app", [plain, method], [])  # path form only


def test_frames_sent_together_decode_as_they_were_sent() -> None:
    from burst_agent.web import _message

    frames = [wire.WebResponseBody(req_id="r", body=b"x" * i, more_body=True) for i in range(20)]
    for n in (1, 3, 15, 16, 20):
        assert wire.decode_web(_message([wire.encode(f) for f in frames[:n]])) == frames[:n]


def test_wsgi_environ_from_an_asgi_scope() -> None:
    from burst._shim.wsgi import environ_of

    env = environ_of({
        "type": "http", "method": "POST", "path": "/ws/app/fn/a/é", "root_path": "/ws/app/fn",
        "query_string": b"x=1", "scheme": "http", "http_version": "1.1",
        "server": ("h", 80), "client": ("1.2.3.4", 5),
        "headers": [(b"content-type", b"text/plain"), (b"x-r", b"a"), (b"x-r", b"b")],
    }, b"body")
    assert env["SCRIPT_NAME"] == "/ws/app/fn"
    assert env["PATH_INFO"] == "/a/é".encode().decode("latin-1")
    assert (env["QUERY_STRING"], env["CONTENT_TYPE"], env["CONTENT_LENGTH"]) == (
        "x=1", "text/plain", "4")
    assert env["HTTP_X_R"] == "a,b" and env["REMOTE_ADDR"] == "1.2.3.4"
    assert env["wsgi.input"].read() == b"body"


def test_the_agents_web_timers_must_be_positive() -> None:
    from burst_agent.settings import AgentSettings

    for name in ("web_keepalive", "web_move_interval", "web_move_timeout"):
        with pytest.raises(ValueError, match=f"BURST_{name.upper()}=0"):
            AgentSettings(**{name: 0})
    assert AgentSettings().web_move_interval > 0


def test_the_agents_stop_ack_timeout_must_be_positive() -> None:
    from burst_agent.settings import AgentSettings

    with pytest.raises(ValueError, match="BURST_STOP_ACK_TIMEOUT=0"):
        AgentSettings(stop_ack_timeout=0)
