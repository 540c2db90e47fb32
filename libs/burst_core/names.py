"""Every subject, stream, consumer, KV bucket, object store and Redis key name.

Nothing else in Burst spells a name out: build it here. Names that embed user
identifiers (workspace, app, function) only accept identifiers validated by
:func:`check_ident`, so they can never contain NATS wildcards or separators.
"""

from __future__ import annotations

import hashlib

from burst.wire import IDENT_RULE, check_ident

__all__ = ["IDENT_RULE", "check_ident"]


def function_key(workspace: str, app: str, function: str) -> str:
    """Dotted key identifying one function of one app of one workspace."""
    return f"{workspace}.{app}.{function}"


def split_function_key(key: str) -> tuple[str, str, str]:
    ws, app, fn = key.split(".")
    return ws, app, fn


def _short_hash(value: str) -> str:
    return hashlib.sha1(value.encode()).hexdigest()[:16]


# ---- streams -------------------------------------------------------------------------
STREAM_INPUTS = "BURST_INPUTS"  # work-queue retention: one message per pending input
STREAM_OUTPUTS = "BURST_OUTPUTS"  # kept for the result-retention period
#: Outputs of transient calls (see :func:`is_transient_call`), kept for the transient
#: result retention (``BURST_TRANSIENT_RESULT_RETENTION``, 600 s by default).
STREAM_TRANSIENT_OUTPUTS = "BURST_TRANSIENT_OUTPUTS"
STREAM_CONTROL = "BURST_CONTROL"  # signals, orders, lifecycle events
STREAM_METERING = "BURST_METERING"  # usage records, long retention (the ledger replays it)
STREAM_LOGS = "BURST_LOGS"  # container stdout/stderr

SUBJECTS_INPUTS = "burst.inputs.>"
SUBJECTS_OUTPUTS = "burst.outputs.>"
SUBJECTS_TRANSIENT_OUTPUTS = "burst.toutputs.>"
SUBJECTS_CONTROL = "burst.control.>"
SUBJECTS_METERING = "burst.metering.>"
SUBJECTS_LOGS = "burst.logs.>"


def input_subject(fn_key: str) -> str:
    return f"burst.inputs.{fn_key}"


_INPUT_PREFIX = "burst.inputs."


def fn_key_of_input_subject(subject: str) -> str | None:
    """The function key an input subject names, or None for another subject."""
    if not subject.startswith(_INPUT_PREFIX):
        return None
    key = subject[len(_INPUT_PREFIX):]
    return key if key.count(".") == 2 else None


#: How the 20-digit tail of a transient call's id begins (and no other call id's does).
TRANSIENT_TAIL = "e5e5"


def is_transient_call(call_id: str) -> bool:
    """Whether ``call_id`` names a transient call: one nobody can ask for again once its
    caller has its result (a client's waited ``.remote()``, the SDK's map inputs). Its
    output and record live in ``STREAM_TRANSIENT_OUTPUTS`` and ``KV_CALLS_TRANSIENT``,
    kept only ``BURST_TRANSIENT_RESULT_RETENTION`` seconds. The id alone says it:
    ``fc-`` + 12 digits of time + a tail that starts with ``TRANSIENT_TAIL``."""
    return len(call_id) == 35 and call_id.startswith(TRANSIENT_TAIL, 15) \
        and call_id.startswith("fc-")


def outputs_stream(call_id: str) -> str:
    """The stream holding the outputs of ``call_id`` (by its id, see :func:`is_transient_call`)."""
    return STREAM_TRANSIENT_OUTPUTS if is_transient_call(call_id) else STREAM_OUTPUTS


def output_subject(call_id: str, attempt: int) -> str:
    """Where an attempt's output goes: ``burst.outputs.<id>.<attempt>``, or
    ``burst.toutputs.<id>.<attempt>`` (stream ``STREAM_TRANSIENT_OUTPUTS``) for a
    transient call."""
    if is_transient_call(call_id):
        return f"burst.toutputs.{call_id}.{attempt}"
    return f"burst.outputs.{call_id}.{attempt}"


def outputs_filter(call_id: str) -> str:
    """Every attempt's output of one call (in the stream :func:`outputs_stream` names)."""
    return output_subject(call_id, 0)[:-1] + "*"


def items_subject(call_id: str, attempt: int) -> str:
    """Items a generator function yields, in order (stream BURST_OUTPUTS)."""
    return f"burst.items.{call_id}.{attempt}"


SUBJECTS_ITEMS = "burst.items.>"


def input_accepted_subject(fn_key: str) -> str:
    return f"burst.control.input_accepted.{fn_key}"


SUBJECTS_INPUT_ACCEPTED = "burst.control.input_accepted.>"


def attempt_changed_subject(call_id: str) -> str:
    """``AttemptChanged``: a call's current attempt moved on (gateways update waiters)."""
    return f"burst.control.attempt_changed.{call_id}"


SUBJECTS_ATTEMPT_CHANGED = "burst.control.attempt_changed.>"


def call_cancelled_subject(fn_key: str) -> str:
    """``CallCancelled``: agents stop the call if it runs, and never start it."""
    return f"burst.control.call_cancelled.{fn_key}"


SUBJECTS_CALL_CANCELLED = "burst.control.call_cancelled.>"


def function_deployed_subject(fn_key: str) -> str:
    return f"burst.control.function_deployed.{fn_key}"


def app_removed_subject(workspace: str, app: str) -> str:
    return f"burst.control.app_removed.{workspace}.{app}"


def agent_orders_subject(agent_id: str) -> str:
    """Placements and stop orders addressed to one agent."""
    return f"burst.control.agent.{agent_id}.orders"


def container_event_subject(event: str, agent_id: str) -> str:
    """Lifecycle events: ``event`` is started, ready or stopped."""
    return f"burst.control.container.{event}.{agent_id}"


SUBJECTS_CONTAINER_EVENTS = "burst.control.container.>"


def trace_container_subject(agent_id: str) -> str:
    """Core NATS (no stream): a traced call waits for a container already starting on
    ``agent_id``; its start goes into that call's trace (burst_core.tracing)."""
    return f"burst.trace_container.{agent_id}"


def agent_lost_subject(agent_id: str) -> str:
    """``AgentLost``: the scheduler marked an agent lost (billing closes its containers)."""
    return f"burst.control.agent_lost.{agent_id}"


SUBJECTS_AGENT_LOST = "burst.control.agent_lost.>"


def metering_subject(workspace: str, agent_id: str) -> str:
    return f"burst.metering.{workspace}.{agent_id}"


def metering_lost_subject(agent_id: str) -> str:
    """``AgentLost`` as billing republishes it into the metering stream (``_`` cannot
    start a workspace name, so this never collides with a workspace's records)."""
    return f"burst.metering._lost.{agent_id}"


def _log_token(value: str) -> str:
    """A container or call id as one subject token; anything else (a call id a shim made
    up, with dots or wildcards) becomes ``_``, as a line of no call."""
    ok = 0 < len(value) <= 64 and all(c.isascii() and (c.isalnum() or c in "-_")
                                      for c in value)
    return value if ok else "_"


def log_subject(fn_key: str, container_id: str = "", call_id: str = "") -> str:
    """Where a container's line (or a platform event of it) goes (stream BURST_LOGS):
    ``burst.logs.<workspace>.<app>.<function>.<container id>.<call id or _>``, so that the
    server filters a read by function, container or call."""
    return f"burst.logs.{fn_key}.{_log_token(container_id)}.{_log_token(call_id)}"


def logs_filter(workspace: str, app: str = "*", function: str = "*", container_id: str = "*",
                call_id: str = "*") -> str:
    """The log subjects of one workspace narrowed by app, function, container and call
    (``*``: any); the values are checked identifiers (no wildcards of their own)."""
    return f"burst.logs.{workspace}.{app}.{function}.{container_id}.{call_id}"


def agent_metrics_subject(agent_id: str) -> str:
    """``AgentMetrics`` of one agent (core NATS, never stored): the gateway exports them."""
    return f"burst.metrics.agent.{agent_id}"


SUBJECTS_AGENT_METRICS = "burst.metrics.agent.*"


def container_exec_subject(agent_id: str) -> str:
    """Core-NATS requests to run a command inside one of the agent's containers
    (``ExecRequest``); the output streams back to the request's reply inbox."""
    return f"burst.exec.{agent_id}"


def exec_stdin_subject(agent_id: str, exec_id: str) -> str:
    """An interactive exec's stdin (``ExecInput``), from the gateway to the agent."""
    return f"burst.exec.{agent_id}.{exec_id}.stdin"


#: An input of this payload format is a ``burst shell`` session: the agent holds it in a
#: container of the function (billed as any container) without running the function.
SHELL_FORMAT = "shell"


def shell_input_subject(call_id: str) -> str:
    """A ``burst shell`` session's input (stream BURST_INPUTS): a subject of its own, which
    only the container placed for that session reads (never a function's consumer: its
    filter names ``burst.inputs.<ws>.<app>.<fn>``, one token more)."""
    return f"burst.inputs.shell.{call_id}"


def shell_consumer(call_id: str) -> str:
    """The pull consumer of one shell session's input (made by the session's container)."""
    return f"shell_{_short_hash(call_id)}"


# Web requests travel over core NATS (never stored: a request is never replayed).
def web_subject(fn_key: str) -> str:
    """Where the gateway sends a web request of a function; the agents holding ready
    containers of it subscribe in the queue group ``WEB_QUEUE`` (one of them takes it)."""
    return f"burst.web.fn.{fn_key}"


WEB_QUEUE = "agents"


def web_request_subject(agent_id: str, req_id: str) -> str:
    """Where the gateway sends a request's body chunks and its cancel, once an agent took it."""
    return f"burst.web.req.{agent_id}.{req_id}"


def web_requests_filter(agent_id: str) -> str:
    return f"burst.web.req.{agent_id}.*"


def web_result_subject(gateway: str) -> str:
    """Where a gateway asks the gateway ``gateway`` for the result of a request it
    redirected (Modal's 303): any gateway answers the redirect's location."""
    return f"burst.web.result.{gateway}"


def proxy_auth_key(key_id: str) -> str:
    """KV ``burst_tokens`` key of a proxy-auth token (never an API token's sha256 key)."""
    return "proxy." + hashlib.sha256(key_id.encode()).hexdigest()


def app_logs_filter(workspace: str, app: str) -> str:
    return f"burst.logs.{workspace}.{app}.>"


STREAM_WEBHOOKS = "BURST_WEBHOOKS"  # webhook deliveries pending (acked once delivered)
SUBJECTS_WEBHOOKS = "burst.webhooks.>"


def webhook_delivery_subject(workspace: str, endpoint_id: str) -> str:
    return f"burst.webhooks.{workspace}.{endpoint_id}"


STREAM_QUEUES = "BURST_QUEUES"  # work-queue retention: one subject per burst.Queue
SUBJECTS_QUEUES = "burst.queue.>"


def queue_subject(workspace: str, queue: str) -> str:
    return f"burst.queue.{workspace}.{queue}"


def queue_consumer(workspace: str, queue: str) -> str:
    return f"q_{_short_hash(workspace + '.' + queue)}"


def dict_meta_key(workspace: str, name: str) -> str:
    return f"meta.{workspace}.{name}"


def dict_entry_key(workspace: str, name: str, key_digest: str) -> str:
    return f"d.{workspace}.{name}.{key_digest}"


def dict_entries_prefix(workspace: str, name: str) -> str:
    """The key prefix (before '.<hash>') of one dict's entries."""
    return f"d.{workspace}.{name}"


# ---- durable consumers ---------------------------------------------------------------
def function_consumer(fn_key: str) -> str:
    """The durable pull consumer of one function's inputs, shared by all its containers."""
    return f"fn_{_short_hash(fn_key)}"


def input_ack_prefix(fn_key: str) -> str:
    """How the JetStream ack subject of each of a function's inputs begins."""
    return f"$JS.ACK.{STREAM_INPUTS}.{function_consumer(fn_key)}."


def agent_consumer(agent_id: str) -> str:
    return f"agent_{agent_id}"


def error_rate_consumer(token: str) -> str:
    """Billing's ephemeral pull consumer of metering records for one error-rate monitor
    (``token`` tells leaders apart): deleted when the monitor stops, or by the server once
    idle."""
    return f"billing_error_rate_{token}"


CONSUMER_SCHEDULER_SIGNALS = "scheduler_signals"
CONSUMER_BILLING_EVENTS = "billing_events"
CONSUMER_WEBHOOK_DELIVERY = "webhook_delivery"

# ---- KV buckets and object store -----------------------------------------------------
KV_DEPLOYMENTS = "burst_deployments"  # key: <workspace>.<app> -> DeploymentRecord
KV_AGENTS = "burst_agents"  # key: <agent_id> -> AgentRecord (claims by compare-and-set)
KV_HEARTBEATS = "burst_heartbeats"  # key: <agent_id> -> AgentHeartbeat
KV_CALLS = "burst_calls"  # key: <call_id> -> CallRecord (TTL: result retention)
# key: <call_id> of a transient call -> CallRecord (TTL: transient result retention)
KV_CALLS_TRANSIENT = "burst_calls_transient"


def calls_bucket(call_id: str) -> str:
    """The KV bucket holding the record of ``call_id`` (see :func:`is_transient_call`)."""
    return KV_CALLS_TRANSIENT if is_transient_call(call_id) else KV_CALLS
KV_TOKENS = "burst_tokens"  # key: sha256(token) -> TokenRecord
KV_SERVICES = "burst_services"  # key: <service>.<instance> -> ServiceHeartbeat
KV_LEDGER = "burst_ledger"  # "state" -> LedgerHeader; ledger_part_key() -> a piece
KV_LEASES = "burst_leases"  # key: <lease name> -> holder id (TTL)
KV_MAPS = "burst_maps"  # key: <map id> -> MapRecord (the call ids of a map, in order)
KV_DICTS = "burst_dicts"  # keys: meta.<ws>.<dict>, d.<ws>.<dict>.<sha256 of the key>
# key: sha256(ws, app, fn, Idempotency-Key) -> "<call id> <sha256 of the request>"
KV_IDEMPOTENCY = "burst_idempotency"
OBJ_BUNDLES = "burst_bundles"  # name: bundle_name() (<workspace>/<sha256 of the bundle>)
OBJ_BLOBS = "burst_blobs"  # name: blob_name(); arguments and results above the inline limit
KV_BUDGETS = "burst_budgets"  # key: budget_key() -> Budget (set by users, via the gateway)
KV_BUDGET_STATE = "burst_budget_state"  # key: budget_key() -> BudgetState (billing writes)
KV_WEBHOOKS = "burst_webhooks"  # key: <workspace>.<endpoint id> -> WebhookEndpoint
KV_WEBHOOK_LOG = "burst_webhook_log"  # key: <workspace>.<delivery id> -> WebhookLogEntry
KV_ALERT_STATE = "burst_alert_state"  # key: alert_state_key() -> AlertState (billing)
KV_SCHEDULES = "burst_schedules"  # key: <fn_key> -> ScheduleState (scheduler, gateway: CAS)
KV_WAITING = "burst_waiting"  # key: <fn_key> -> FunctionWaiting (scheduler writes)
# keys: <ws>.<client_id> -> ClientHeartbeat; <ws>.<client_id>.<kind>.<name> -> ClientObject
KV_CLIENTS = "burst_clients"
#: The client reaper's own write each pass (it counts missed heartbeats only while the
#: store takes its writes); ``_`` cannot start a workspace name.
CLIENTS_PROBE_KEY = "_reaper"
KV_WORKSPACES = "burst_workspaces"  # key: <workspace> -> WorkspaceRecord
KV_APP_VERSIONS = "burst_app_versions"  # key: app_version_key() -> AppVersion
KV_SECRETS = "burst_secrets"  # key: secret_key() -> SecretRecord (values sealed; gateway only)
KV_VOLUMES = "burst_volumes"  # key: volume_key() -> VolumeRecord (the tree; versioned by CAS)

#: Core NATS (never a stream): an agent asks the gateways for a placed container's secret
#: values; one gateway of the queue group answers.
SUBJECT_SECRETS_FETCH = "burst.secrets.fetch"
QUEUE_SECRETS_FETCH = "gateway_secrets"


def secret_key(workspace: str, name: str) -> str:
    return f"{workspace}.{name}"


def volume_key(workspace: str, name: str) -> str:
    return f"{workspace}.{name}"


def volume_store(volume_id: str) -> str:
    """A volume's object store (its content-addressed chunks): one per volume, so that
    ``burst volume delete`` frees its space by deleting one stream."""
    return f"burst_vol_{volume_id}"


def budget_key(workspace: str, app: str | None = None, function: str | None = None) -> str:
    """``<ws>`` (the workspace scope), ``<ws>.<app>`` or ``<ws>.<app>.<function>``."""
    return ".".join(p for p in (workspace, app, function) if p)


def webhook_key(workspace: str, endpoint_id: str) -> str:
    return f"{workspace}.{endpoint_id}"


def webhook_log_key(workspace: str, delivery_id: str) -> str:
    return f"{workspace}.{delivery_id}"


def alert_state_key(kind: str, subject: str) -> str:
    """``runaway.<container id>`` or ``error_rate.<ws>.<app>.<fn>``: what an alert fired on."""
    return f"{kind}.{subject}"


def blob_name(workspace: str, ref: str) -> str:
    """A large argument or result in ``OBJ_BLOBS``: scoped to its workspace, so a blob
    is found only with its workspace's scope (the same bytes in two workspaces are two
    objects, each with its own retention)."""
    return f"{workspace}/{ref}"


def bundle_name(workspace: str, bundle_hash: str) -> str:
    """An app's source bundle in ``OBJ_BUNDLES``, scoped to its workspace like blobs.
    (Bundles stored before workspaces were scoped are named by the bare hash.)"""
    return f"{workspace}/{bundle_hash}"


def deployment_key(workspace: str, app: str) -> str:
    return f"{workspace}.{app}"


def app_version_key(workspace: str, app: str, version: int) -> str:
    """A deployed app's version in ``KV_APP_VERSIONS`` (zero-padded: keys sort by version)."""
    return f"{workspace}.{app}.{version:09d}"


def app_versions_filter(workspace: str, app: str) -> str:
    return f"{workspace}.{app}.*"


def client_key(workspace: str, client_id: str) -> str:
    """A client's heartbeat in ``KV_CLIENTS``."""
    return f"{workspace}.{client_id}"


def client_object_key(workspace: str, client_id: str, kind: str, name: str) -> str:
    """An ephemeral Dict or Queue a client owns, in ``KV_CLIENTS``."""
    return f"{workspace}.{client_id}.{kind}.{name}"


def service_key(service: str, instance: str) -> str:
    return f"{service}.{instance}"


LEDGER_STATE_KEY = "state"


def ledger_part_key(writer: str, n: int) -> str:
    """A piece of the saved ledger (``burst_core.ledger_store``), slot ``n`` of one writer."""
    return f"part.{writer}.{n}"


LEASE_BILLING = "billing"
LEASE_SCHEDULER = "scheduler"

# ---- Redis keys ----------------------------------------------------------------------
REDIS_PREFIX = "burst:"


def redis_pool_key(fn_key: str) -> str:
    """Hash: container id -> ContainerView (msgpack) for one function's warm pool."""
    return f"{REDIS_PREFIX}pool:{fn_key}"


REDIS_POOLED_FUNCTIONS = f"{REDIS_PREFIX}pools"  # set of function keys with a pool entry
