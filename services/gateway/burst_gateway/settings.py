from __future__ import annotations

import dataclasses

from burst_core.settings import CommonSettings


@dataclasses.dataclass
class GatewaySettings(CommonSettings):
    #: Address and port the HTTP API listens on.
    host: str = "127.0.0.1"
    port: int = 8780
    #: sha256 of the admin token `burst up` created; stored on start if missing.
    bootstrap_token_hash: str = ""
    #: Workspace of the bootstrap admin token.
    bootstrap_workspace: str = "default"
    #: ``Retry-After`` (seconds) of the 503 answered while NATS is out of reach.
    unavailable_retry_after: float = 1.0
    #: Seconds after its last liveness record that a service replica leaves ``/v1/status``
    #: (one killed without a goodbye; a restarted one writes under a new instance id).
    service_heartbeat_timeout: float = 10.0
    #: Longest a synchronous call request is held before answering "pending".
    max_sync_wait: float = 60.0
    #: Largest request body accepted, in bytes.
    max_body_bytes: int = 64 << 20
    #: Seconds a token lookup stays cached: a revoked token stops working on every
    #: gateway within this time (an expired one at once).
    token_cache_ttl: float = 2.0
    #: A token's "last used" time is written at most once per this many seconds.
    token_use_interval: float = 60.0
    #: Versions of each deployed app kept (``burst app history``), with their bundles, for
    #: ``burst app rollback``; older ones are forgotten.
    app_history: int = 10
    #: At most one ``input.accepted`` signal per function per this many seconds from this
    #: gateway: calls in between share a trailing one (``burst_core.calls.Signals``);
    #: 0 sends one per call.
    signal_interval: float = 0.05
    #: Port of the web endpoints (``/{workspace}/{app}/{endpoint}/...``), never the API's;
    #: 0: no web port.
    web_port: int = 8782
    #: The externally visible base URL of the web port (behind a proxy), e.g.
    #: ``https://web.example.com``; "" means ``http://HOST:WEB_PORT``.
    web_url: str = ""
    #: Largest request body a web endpoint gets, in bytes (413 past it).
    web_max_body_bytes: int = 64 << 20
    #: Longest a request to an endpoint with no ready container is held while one starts.
    web_startup_timeout: float = 120.0
    #: Seconds without a frame (each agent sends keepalives) after which a request's agent
    #: is taken as lost: 502.
    web_agent_timeout: float = 10.0
    #: Seconds an agent has to take a request it was handed (502 past it).
    web_accept_timeout: float = 10.0
    #: While no container of the endpoint is ready: seconds between tries to hand it over.
    web_retry_interval: float = 0.05
    #: A wildcard domain whose names all reach the web port (``*.web.example.com``):
    #: endpoints then also answer, and their URLs are, Modal's host forms
    #: ``{workspace}--{app}-{endpoint}.{domain}`` and ``{workspace}--{label}.{domain}``.
    #: "" : the path form only.
    web_domain: str = ""
    #: Seconds a request may run before its response starts; past it the client gets
    #: Modal's 303 to a location that waits for the result (see web_redirect.py).
    web_request_timeout: float = 150.0
    #: Seconds a dashboard sign-in lasts (its session cookie's lifetime).
    dashboard_session_ttl: float = 8 * 3600.0
    #: Seconds of recent history the dashboard's call lists and figures cover.
    dashboard_window: float = 3600.0
    #: Most stream messages one dashboard page reads (per stream): bounded work however
    #: busy the cluster is; older calls of the window then drop out of the figures.
    dashboard_max_messages: int = 5000
    #: Seconds an agent's last figures stay in ``/metrics`` without a newer one (an agent
    #: that stopped publishing: gone, or its metrics turned off).
    metrics_stale: float = 60.0
    #: Seconds /metrics reuses what it read of the ledger (spend per app) and of the
    #: services' liveness records, so frequent scrapes cost the gateway little.
    metrics_cache_ttl: float = 10.0
    #: Most log lines one read of the logs may scan (``burst app logs``, ``--search``): a
    #: window that holds more is refused, naming the count (narrow ``--since`` or filter by
    #: function, call or container), so no request reads unbounded history.
    log_scan_max: int = 200_000
    #: Most lines one read returns (the newest of the window).
    log_lines_max: int = 10_000
    #: Longest the gateway waits for an agent to take a ``burst container exec`` command.
    exec_accept_timeout: float = 10.0
    #: Seconds of silence after which a followed log stream (server-sent events) gets a
    #: keepalive comment (and a client that left is noticed).
    log_keepalive: float = 5.0
    #: How far back a read of the logs goes without ``since`` (seconds).
    log_default_since: float = 3600.0
