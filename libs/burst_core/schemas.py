"""Wire schemas: every message and stored record that crosses a process boundary.

Rules (see jcrist/msgspec's schema-evolution guide):
- logic-free ``msgspec.Struct``s, tagged by class name, each with a schema version ``v``;
- new fields always get defaults, a field's type never changes, unknown fields are skipped,
  so an older service can read what a newer one wrote and the other way round;
- payloads (arguments, results) are opaque bytes: services never unpickle user data.

Encoding is msgpack everywhere; :func:`encode` and the typed decoders below are built once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, TypeVar

import msgspec

# Resources and FunctionSpec are shared with the SDK, which must stay light.
from burst.wire import FunctionSpec, Resources, RetryPolicy, SecretSpec

if TYPE_CHECKING:
    from typing_extensions import TypeForm

__all__ = ["FunctionSpec", "Resources", "RetryPolicy"]

_T = TypeVar("_T")


class _Wire(msgspec.Struct, tag=True, kw_only=True, omit_defaults=True):
    v: int = 1


# ---- shared parts --------------------------------------------------------------------
class GpuInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    index: int
    type: str
    memory_mb: int = 0
    uuid: str = ""
    #: Why NVML says this GPU is unhealthy (an Xid or uncorrectable ECC error); no
    #: placements on it while set.
    unhealthy: str = ""
    #: GPU memory a finished container (or a process of none) left allocated, as found.
    left: str = ""


# ---- stored records (KV) -------------------------------------------------------------
class DeploymentRecord(_Wire, kw_only=True):
    workspace: str
    app: str
    deployment_id: str
    bundle_hash: str
    functions: list[FunctionSpec]
    created_at: float
    ephemeral: bool = False
    #: An ephemeral run's app name (``app`` is then its id, ``ap-...``): metering, budgets
    #: and listings go by this name. "" for a deployed app (its name is ``app``).
    name: str = ""
    #: The client whose heartbeats keep an ephemeral run alive ("" : a deployed app, or a
    #: detached run, which lives until ``burst app stop``).
    client_id: str = ""
    #: How containers of the deployment it replaces leave: "rolling" (they finish what
    #: they run, take nothing new, then stop) or "recreate" (stopped at once; what they
    #: ran is handed back and runs on the new code).
    strategy: str = "rolling"
    #: A deployed app's version (1, 2, ...; see AppVersion); 0 for an ephemeral run.
    version: int = 0
    #: Id of the token that deployed it (``TokenRecord.token_id``).
    deployed_by: str = ""
    #: The version this one redeployed (``burst app rollback``); 0 for a fresh deploy.
    rollback_of: int = 0


class AppVersion(_Wire, kw_only=True):
    """One deployed version of an app (KV ``burst_app_versions``, key
    ``names.app_version_key``): what ``burst app history`` lists and ``burst app
    rollback`` deploys again. The newest ``BURST_APP_HISTORY`` are kept, with their
    bundles."""

    version: int
    deployment: DeploymentRecord


class ClientHeartbeat(_Wire, kw_only=True):
    """A client's last heartbeat (KV ``burst_clients``, key ``<ws>.<client_id>``), written
    by whichever gateway it reached; the scheduler's reaper stops what the client owns when
    the value stops changing for ``client_timeout`` seconds."""

    workspace: str
    client_id: str
    at: float
    seq: int = 0


class ClientObject(_Wire, kw_only=True):
    """An ephemeral Dict, Queue or Volume a client made (KV ``burst_clients``, key
    ``<ws>.<client_id>.<kind>.<name>``): removed with the client's other things."""

    workspace: str
    client_id: str
    kind: Literal["dict", "queue", "volume"]
    name: str
    created_at: float


class AgentRecord(_Wire, kw_only=True):
    """An agent's resources and what is claimed on it.

    Claims are made by compare-and-set on this entry (KV revision), never by a prior
    read alone: two schedulers racing for the same GPU cannot both win.
    """

    agent_id: str
    hostname: str = ""
    cpu: float
    memory_mb: int
    gpus: list[GpuInfo] = msgspec.field(default_factory=list)
    gpus_declared: bool = False
    spot: bool = False
    runtime: str = "process"
    allocations: dict[str, Allocation] = msgspec.field(default_factory=dict)
    started_at: float = 0.0
    draining: bool = False
    # Set by the scheduler that found this agent's heartbeat older than its timeout (its
    # allocations are released at the same time); the agent clears it when it rejoins.
    lost_at: float = 0.0
    # Why the agent drains, when it does ("preempted", ...).
    drain_reason: str = ""


class Allocation(msgspec.Struct, kw_only=True, omit_defaults=True):
    fn_key: str
    resources: Resources
    gpu_indices: list[int] = msgspec.field(default_factory=list)
    placed_at: float = 0.0
    #: A container placed for one ``burst shell`` session (its call id): it takes no
    #: other input, and the function's scaling does not count it.
    shell_call_id: str = ""


class CallRecord(_Wire, kw_only=True):
    """One call; the current attempt is decided by compare-and-set on this entry."""

    call_id: str
    workspace: str
    app: str
    function: str
    input_id: str
    attempt: int = 1
    attempt_token: str
    created_at: float
    deployment_id: str = ""
    # Failed attempts counted against the function's retries, and platform faults
    # (lost agent, preemption) retried apart from them.
    user_failures: int = 0
    internal_retries: int = 0
    # Set with the attempt bump of a scheduled user retry: the next delivery of the input
    # runs that attempt instead of counting as an internal retry.
    retry_pending: bool = False
    # The call that made this one from inside its container ("" for a client's call).
    parent_call_id: str = ""


class ScheduleState(_Wire, kw_only=True):
    """Where one function's schedule stands (KV ``burst_schedules``, key: fn_key).

    Tick times are integer milliseconds since the epoch, so a tick's identity
    (``<fn_key>:<tick>``) is exact. Written by compare-and-set: the deciding scheduler
    advances ``last_tick_ms`` after firing a tick; the gateway sets ``paused``,
    ``resumed_at`` and ``backfill`` for users.
    """

    fn_key: str
    last_tick_ms: int = 0  # the latest tick fired or given up; later ones are due
    paused: bool = False
    paused_at: float = 0.0
    resumed_at: float = 0.0  # a resume the scheduler has yet to apply (0: none)
    missed: list[list[int]] = msgspec.field(default_factory=list)  # [first, last] tick ranges
    backfill: bool = False  # fire every missed tick (once each), then clear ``missed``
    fired: int = 0
    last_fired_at: float = 0.0
    last_call_id: str = ""
    # Ticks that came due while a hard budget covering the function was spent: given up
    # (``last_tick_ms`` passes them), never fired, counted here.
    skipped: int = 0
    last_skipped_at: float = 0.0
    last_skipped_tick_ms: int = 0
    last_skipped_reason: str = ""


class FunctionWaiting(_Wire, kw_only=True):
    """Why a function with work has fewer containers than it needs (KV ``burst_waiting``,
    key: fn_key); deleted once it gets one."""

    fn_key: str
    reason: str  # "waiting for 2×H100: none free"
    since: float
    updated_at: float = 0.0


class MapRecord(_Wire, kw_only=True):
    """A map made over HTTP: its calls, in input order (results are read by offset)."""

    map_id: str
    workspace: str
    app: str
    function: str
    calls: list[str]
    tokens: list[str]
    created_at: float


class TokenRecord(_Wire, kw_only=True):
    workspace: str
    name: str = ""
    #: Records from before scopes: True is an operator token (scope "operator").
    admin: bool = False
    created_at: float = 0.0
    #: "" for an API token (keyed by its sha256); "proxy_auth" for a web endpoint
    #: proxy-auth token (keyed by ``names.proxy_auth_key``; its secret's sha256 here).
    kind: str = ""
    secret_hash: str = ""
    #: operator, admin, deploy, invoke or read; "" on records from before scopes (then
    #: ``admin`` says operator, else the workspace's admin).
    scope: str = ""
    #: Shown by ``burst token list`` and named by ``burst token revoke`` ("tk-..."; a
    #: proxy-auth token's is its key id, "wk-..."). "" on records from before ids: the
    #: gateway derives one from the key.
    token_id: str = ""
    #: Unix time past which the token no longer works; 0: never.
    expires_at: float = 0.0
    #: Unix time it was revoked; 0: not revoked.
    revoked_at: float = 0.0
    #: Unix time of its last use, written at most once per ``BURST_TOKEN_USE_INTERVAL``.
    last_used_at: float = 0.0
    #: Id of the token that created it ("" for the one ``burst up`` made).
    created_by: str = ""
    #: The operator token a ``burst up`` made (the gateway's bootstrap hash): a later
    #: bootstrap with another hash revokes it, so one ``burst up`` token stays valid.
    bootstrap: bool = False


class WorkspaceRecord(_Wire, kw_only=True):
    """A workspace (KV ``burst_workspaces``, key: its name): tokens are made only for
    workspaces that exist."""

    name: str
    created_at: float
    created_by: str = ""


class ServiceHeartbeat(_Wire, kw_only=True):
    service: str
    instance: str
    at: float
    started_at: float
    info: dict[str, str] = msgspec.field(default_factory=dict)


class LedgerLine(msgspec.Struct, kw_only=True, omit_defaults=True):
    workspace: str
    app: str
    function: str
    seconds: float = 0.0
    cost: float = 0.0
    records: int = 0
    # UTC day (YYYY-MM-DD) of the records' starts, on the per-day lines; "" on the totals
    day: str = ""
    # the cost split by resource: cost == cpu_cost + memory_cost + sum(gpu_cost.values())
    cpu_core_seconds: float = 0.0
    cpu_cost: float = 0.0
    memory_gib_seconds: float = 0.0
    memory_cost: float = 0.0
    gpu_seconds: dict[str, float] = msgspec.field(default_factory=dict)  # by GPU type
    gpu_cost: dict[str, float] = msgspec.field(default_factory=dict)
    # containers of a lost agent: seconds billed up to the last heartbeat without a record,
    # and seconds from the last heartbeat to the loss (not billed, recorded)
    lost_billed_seconds: float = 0.0
    lost_unaccounted_seconds: float = 0.0
    lost_containers: int = 0
    # the part of seconds and cost used by ephemeral runs (`burst run`) of the app
    ephemeral_seconds: float = 0.0
    ephemeral_cost: float = 0.0


class ContainerMark(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the ledger keeps of an open container: enough to close it if its agent is lost."""

    workspace: str
    app: str
    function: str
    agent_id: str
    resources: Resources
    spot: bool = False
    end: float = 0.0  # latest end of its counted records (agent clock)
    seen_at: float = 0.0  # stream time of its latest record


class LedgerSnapshot(_Wire, kw_only=True):
    """Billing's fold of the metering stream, up to and including ``seq``."""

    seq: int = 0
    lines: dict[str, LedgerLine] = msgspec.field(default_factory=dict)
    # container id -> interval numbers already counted (dedupe of redeliveries) above
    # that container's ``seen_through`` mark; older snapshots may still list all of them
    seen: dict[str, list[int]] = msgspec.field(default_factory=dict)
    updated_at: float = 0.0
    # container id -> w: every interval 0..w of that container is counted
    seen_through: dict[str, int] = msgspec.field(default_factory=dict)
    # container id -> interval of its final record, while some earlier one is missing
    final_interval: dict[str, int] = msgspec.field(default_factory=dict)
    # container id -> n: the final record was n and every interval 0..n is counted;
    # nothing more of that container is ever counted (see burst_core.ledger)
    closed: dict[str, int] = msgspec.field(default_factory=dict)
    # "<YYYY-MM-DD>.<workspace>.<app>.<function>" -> that day's line
    days: dict[str, LedgerLine] = msgspec.field(default_factory=dict)
    # stream time (epoch s) of the latest folded message: the fold's only clock
    clock: float = 0.0
    # container id -> stream time it was closed (pruned a dedupe horizon later)
    closed_at: dict[str, float] = msgspec.field(default_factory=dict)
    # open containers (records counted, no final yet)
    open: dict[str, ContainerMark] = msgspec.field(default_factory=dict)
    # stream time of the last pruning pass
    pruned_at: float = 0.0
    # records refused because they ended more than a dedupe horizon before the stream time
    late_records: int = 0
    late_seconds: float = 0.0
    # agents lost: "<agent_id>:<last_heartbeat_at>" already folded
    lost_agents: dict[str, float] = msgspec.field(default_factory=dict)


class LedgerPart(msgspec.Struct, array_like=True):
    key: str  # names.ledger_part_key()
    digest: str  # sha256 of the piece, hex: a reader that finds other bytes retries


class LedgerHeader(_Wire, kw_only=True):
    """The saved ledger (KV ``burst_ledger``, key ``state``): its stream position and the
    pieces that hold it, by group (the snapshot without its day lines, then one group per
    month of day lines), each group's pieces in order. See ``burst_core.ledger_store``."""

    seq: int = 0
    updated_at: float = 0.0
    groups: list[list[LedgerPart]] = msgspec.field(default_factory=list)


class LeaseRecord(_Wire, kw_only=True):
    """Who holds a singleton role (KV ``burst_leases``), until when (epoch seconds)."""

    holder: str
    expires_at: float
    acquired_at: float = 0.0


class Budget(_Wire, kw_only=True):
    """A spending limit on a scope (see :mod:`burst_core.budgets`), set by a user."""

    workspace: str
    scope: str  # "workspace", "<app>" or "<app>.<function>"
    limit: float  # USD per period
    hard: bool = False  # refuse calls and stop containers once spent
    alert_at: list[int] = msgspec.field(default_factory=list)  # percent thresholds
    period: str = "month"  # "month", "<N>d" or "YYYY-MM-DD..YYYY-MM-DD"
    created_at: float = 0.0


class BudgetState(_Wire, kw_only=True):
    """Billing's view of one budget in its current period (KV ``burst_budget_state``)."""

    workspace: str
    scope: str
    period: str  # the period's id: "YYYY-MM" or "YYYY-MM-DD..YYYY-MM-DD"
    limit: float
    hard: bool = False
    spend: float = 0.0
    fired: list[int] = msgspec.field(default_factory=list)  # thresholds alerted this period
    exceeded: bool = False  # a hard cap is spent: calls refused, containers stopped
    exceeded_at: float = 0.0
    spend_at_exceeded: float = 0.0
    overshoot: float = 0.0  # spend beyond the limit (what ran while containers stopped)
    updated_at: float = 0.0


class AlertState(_Wire, kw_only=True):
    """What an alert fired on, so it fires once: a runaway container (kept while it
    lives) or a function whose error rate crossed its threshold (``active`` until it
    drops below)."""

    key: str
    active: bool = True
    at: float = 0.0
    detail: str = ""


class WebhookEndpoint(_Wire, kw_only=True):
    endpoint_id: str
    workspace: str
    url: str
    events: list[str]
    # "whsec_" + base64 of the signing key, sealed at rest (burst_core.sealing: Fernet with
    # a key derived from the master key); a plain value stored before sealing still reads.
    secret: str
    created_at: float = 0.0
    description: str = ""


class WebhookDelivery(_Wire, kw_only=True):
    """One event for one endpoint, pending in ``BURST_WEBHOOKS`` until delivered."""

    delivery_id: str  # the webhook-id header: the same on every retry
    endpoint_id: str
    workspace: str
    event_type: str
    body: bytes  # the JSON body, signed as sent
    created_at: float


class WebhookLogEntry(_Wire, kw_only=True):
    delivery_id: str
    endpoint_id: str
    workspace: str
    event_type: str
    url: str = ""
    status: Literal["pending", "retrying", "delivered", "failed", "refused"] = "pending"
    attempts: int = 0
    last_status_code: int = 0
    last_error: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0


# ---- data plane ----------------------------------------------------------------------
class Input(_Wire, kw_only=True):
    workspace: str
    app: str
    function: str
    call_id: str
    input_id: str
    attempt: int = 1
    attempt_token: str
    payload: bytes  # cloudpickle of (args, kwargs); opaque to services
    accepted_at: float
    deployment_id: str = ""
    # "pickle" (the SDK) or "json" (HTTP callers: {"args": [...], "kwargs": {...}}); the
    # output's payload has the same format.
    payload_format: str = "pickle"
    # sha256 of the payload in the blob object store when it is above the inline limit.
    payload_ref: str = ""
    # A call made from inside a container: the call that container was running (the
    # parent), and the function keys of the parent and of its ancestors waiting for it,
    # root first (the agent refuses a waited-on call whose function's slots they all
    # hold; a spawned call's lineage starts afresh).
    parent_call_id: str = ""
    lineage: list[str] = msgspec.field(default_factory=list)


OutputStatus = Literal["success", "failure", "timeout", "terminated", "internal"]


class Output(_Wire, kw_only=True):
    call_id: str
    input_id: str
    attempt: int = 1
    attempt_token: str
    status: OutputStatus
    # success: cloudpickle of the result; failure: cloudpickle of the exception (or b"")
    payload: bytes = b""
    error_type: str = ""
    error_message: str = ""
    traceback: str = ""
    container_id: str = ""
    log_lines: int = 0  # lines the call printed, so a log follower can wait for them
    started_at: float = 0.0
    finished_at: float = 0.0
    payload_format: str = "pickle"
    payload_ref: str = ""  # a result above the inline limit, in the blob object store
    # The caller's workspace. A call answered within its synchronous wait has no record
    # (KV ``burst_calls``; see ``burst_core.calls.create_many``): its output alone says
    # whose it is when it is looked up later.
    workspace: str = ""


class OutputItem(_Wire, kw_only=True):
    """One item a generator function yielded; the call's Output follows the last one."""

    call_id: str
    attempt: int = 1
    attempt_token: str
    index: int
    payload: bytes
    payload_format: str = "pickle"


class LogLine(_Wire, kw_only=True):
    workspace: str
    app: str
    function: str
    container_id: str
    call_id: str = ""
    stream: Literal["stdout", "stderr"] = "stdout"
    line: str
    at: float
    #: The attempt of ``call_id`` that printed it: a follower waiting for the lines of a
    #: retried call's last attempt must not count those of the attempts before.
    attempt: int = 1
    #: A platform event of the container rather than a line it printed, named
    #: ``container.started``, ``container.ready`` (a cold start), ``container.stopped``,
    #: ``container.oom``, ``call.timeout``, ``container.preempted`` or ``image.build``;
    #: ``line`` then says it in words. "" for the user's own output.
    event: str = ""


# ---- control plane -------------------------------------------------------------------
class AttemptChanged(_Wire, kw_only=True):
    """A call moved on to a new attempt (a retry): outputs of older attempts are refused."""

    call_id: str
    attempt: int
    attempt_token: str
    reason: str = ""  # "retry" | "internal"


class CallCancelled(_Wire, kw_only=True):
    """A call was cancelled; its ``terminated`` output is already stored."""

    call_id: str
    fn_key: str
    at: float


class InputAccepted(_Wire, kw_only=True):
    """Payload-free signal: a function has new work."""

    fn_key: str
    call_id: str
    at: float
    #: A ``burst shell`` session (``call_id``) wants a new container of its own.
    shell: bool = False


class FunctionDeployed(_Wire, kw_only=True):
    workspace: str
    app: str
    deployment_id: str
    function: FunctionSpec
    #: How the containers of older deployments of the function leave (see
    #: ``DeploymentRecord.strategy``).
    strategy: str = "rolling"
    #: A run (``burst run``, ``burst serve``): its images are built as its containers
    #: start, where its output is followed; a deployment's as it is deployed.
    ephemeral: bool = False


class AppRemoved(_Wire, kw_only=True):
    workspace: str
    app: str
    deployment_id: str


class Placement(_Wire, kw_only=True):
    """Order to an agent: start one container for a function."""

    container_id: str
    agent_id: str
    workspace: str
    app: str
    deployment_id: str
    bundle_hash: str
    function: FunctionSpec
    resources: Resources
    gpu_indices: list[int] = msgspec.field(default_factory=list)
    spot: bool = False
    placed_at: float
    #: An ephemeral run's app name (``app`` is its id): what its metering is billed under.
    app_name: str = ""
    #: Set after enough failed starts of the function in a row: if this container fails
    #: to start too (whatever the reason), it answers the waiting calls with the error.
    fail_calls_on_start_error: bool = False
    #: A container for one ``burst shell`` session (its call id): it holds only that
    #: session's input (``names.shell_input_subject``), and stops when it ends.
    shell_call_id: str = ""


class StopContainer(_Wire, kw_only=True):
    """Order to an agent: stop a container.

    With ``if_idle_since`` set, the agent stops it only if it has been idle without a
    break since that time (so a scale-down decision made on a stale view never kills a
    container that picked up work in the meantime).
    """

    container_id: str
    agent_id: str
    reason: str = "scaledown"
    if_idle_since: float | None = None


class PreemptAgent(_Wire, kw_only=True):
    """Order to an agent: its capacity is being reclaimed (a spot reclaim notice).

    The agent marks itself draining (no placement lands there any more), stops every
    container with reason ``preempted`` (in-flight inputs handed back at once, ``@exit``
    within the stop grace) and the scheduler places replacements elsewhere.
    """

    agent_id: str
    reason: str = "preempted"
    at: float = 0.0
    #: ``burst agent drain``: nothing new is placed there, the inputs running there
    #: finish (idle containers stop at once), then the agent leaves the cluster (deletes
    #: its records and exits).
    leave: bool = False
    #: Seconds a drain lets running inputs finish (0: the agent's ``drain_timeout``);
    #: what still runs then is interrupted and handed back to run elsewhere.
    timeout: float = 0.0


AgentOrder = Placement | StopContainer | PreemptAgent


class AgentLost(_Wire, kw_only=True):
    """An agent missed its heartbeat window and was marked lost by the scheduler.

    Its allocations were released; ``container_ids`` are the containers it had (claimed
    or reported). Billing closes them at ``last_heartbeat_at``; the span from there to
    ``lost_at`` is the lost span.
    """

    agent_id: str
    started_at: float = 0.0  # the agent's incarnation (its record's started_at)
    last_heartbeat_at: float
    lost_at: float
    container_ids: list[str] = msgspec.field(default_factory=list)


class ContainerStarted(_Wire, kw_only=True):
    container_id: str
    agent_id: str
    workspace: str
    app: str
    function: str
    resources: Resources
    gpu_indices: list[int] = msgspec.field(default_factory=list)
    spot: bool = False
    at: float


class ContainerReady(_Wire, kw_only=True):
    container_id: str
    agent_id: str
    fn_key: str
    at: float


class ContainerStopped(_Wire, kw_only=True):
    container_id: str
    agent_id: str
    workspace: str
    app: str
    function: str
    reason: str  # scaledown | crashed | agent_shutdown | oom | failed_to_start | ...
    exit_code: int | None = None
    at: float
    detail: str = ""
    #: Inputs it was running when it stopped: a crash with inputs running is theirs (their
    #: retries pace them), one without is the function's containers crash-looping.
    inputs_running: int = 0


ContainerEvent = ContainerStarted | ContainerReady | ContainerStopped


class ContainerView(msgspec.Struct, kw_only=True, omit_defaults=True):
    container_id: str
    fn_key: str
    state: Literal["starting", "idle", "busy", "stopping"]
    idle_since: float | None = None
    in_flight: int = 0
    max_inputs: int = 1
    #: Start (agent clock) of the oldest input in flight; billing's runaway check uses it.
    busy_since: float | None = None
    #: The JetStream ack subjects of the inputs in flight: a scheduler that marks the
    #: agent lost naks them, so they run again at once rather than after AckWait.
    acks: list[str] = msgspec.field(default_factory=list)
    #: When it started (agent clock; 0: not yet), and the inputs it answered since.
    started_at: float = 0.0
    inputs_served: int = 0
    #: What it used at the agent's last look (``BURST_METRICS_INTERVAL``): CPU cores
    #: (averaged over that interval) and memory (MiB); None where the runtime cannot say.
    cpu_used: float | None = None
    memory_used_mb: float | None = None
    #: Its GPUs (indices on the agent) and their type.
    gpu_indices: list[int] = msgspec.field(default_factory=list)
    gpu_type: str = ""


class AgentHeartbeat(_Wire, kw_only=True):
    agent_id: str
    at: float
    seq: int = 0
    containers: list[ContainerView] = msgspec.field(default_factory=list)
    #: Web requests the agent holds per function key, running or waiting for a free slot
    #: (the scheduler's backlog counts them as it counts queued inputs).
    web_requests: dict[str, int] = msgspec.field(default_factory=dict)


class Histogram(msgspec.Struct, kw_only=True, omit_defaults=True, array_like=True):
    """Counts per bucket (not cumulative) of ``burst_core.metrics.BUCKETS``, and the sum."""

    counts: list[int]
    total: float = 0.0


class FunctionFigures(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One function's figures on one agent, cumulative since the agent started."""

    #: Outputs stored, by status (success, failure, timeout, terminated, internal).
    calls: dict[str, int] = msgspec.field(default_factory=dict)
    #: Seconds from an input's start in a container to its output.
    latency: Histogram | None = None
    #: Seconds from a call's acceptance to its start in a container.
    queue: Histogram | None = None
    cold_starts: int = 0
    #: Seconds from a placement's arrival to its container being ready.
    cold_start: Histogram | None = None
    #: Now: containers by state, and inputs (and web requests) running or waiting in them.
    containers: dict[str, int] = msgspec.field(default_factory=dict)
    in_flight: int = 0


class GpuFigures(msgspec.Struct, kw_only=True, omit_defaults=True):
    index: int
    type: str = ""
    utilisation: float = 0.0  # percent
    memory_used_mb: float = 0.0
    memory_total_mb: float = 0.0
    #: Memory used per container where NVML maps processes to containers.
    containers: dict[str, float] = msgspec.field(default_factory=dict)


class AgentMetrics(_Wire, kw_only=True):
    """An agent's figures, published every ``BURST_METRICS_INTERVAL`` over core NATS
    (agents open no port); the gateway exports them at ``/metrics``."""

    agent_id: str
    at: float
    cpu_percent: float = 0.0  # the machine's, over the last interval
    memory_used_mb: float = 0.0
    memory_total_mb: float = 0.0
    gpus: list[GpuFigures] = msgspec.field(default_factory=list)
    #: By function key.
    functions: dict[str, FunctionFigures] = msgspec.field(default_factory=dict)


class ExecRequest(_Wire, kw_only=True):
    """Run ``argv`` inside a running container (``burst container exec``), over core NATS
    to the container's agent; its output and exit code go to ``reply`` as ``ExecOutput``."""

    exec_id: str
    container_id: str
    workspace: str
    argv: list[str]
    reply: str
    timeout: float = 0.0  # 0: the agent's BURST_EXEC_TIMEOUT
    #: Its stdin comes as ``ExecInput`` frames (``names.exec_stdin_subject``); else empty.
    interactive: bool = False


class ExecInput(_Wire, kw_only=True):
    """A chunk of an interactive exec's stdin (``eof``: no more)."""

    exec_id: str
    data: bytes = b""
    eof: bool = False


class ExecAccepted(_Wire, kw_only=True):
    """The agent's answer to an ``ExecRequest``: "" (running), or why not."""

    error_type: str = ""  # NotFoundError | ConflictError | InvalidError
    error: str = ""


class ExecOutput(_Wire, kw_only=True):
    exec_id: str
    #: stdout | stderr | keepalive | exit
    kind: str
    data: bytes = b""
    exit_code: int | None = None


class MeteringRecord(_Wire, kw_only=True):
    """Usage of one container over one interval; (container_id, interval) is its identity."""

    container_id: str
    interval: int
    start: float
    end: float
    workspace: str
    app: str
    function: str
    agent_id: str
    resources: Resources
    spot: bool = False
    final: bool = False
    #: Calls of this container whose output the agent stored during the interval, by
    #: outcome: ``success`` in ``succeeded``; ``failure``, ``timeout`` and ``internal`` in
    #: ``failed``. Cancelled calls are not counted, nor attempts the user's retries repeat
    #: (only a call's stored output is). Billing's error-rate alert reads them; the ledger
    #: ignores them. Riding on the record, they are counted once with it.
    succeeded: int = 0
    failed: int = 0
    #: An ephemeral run's id when the container belongs to one (``app`` is then the run's
    #: app name, so that usage and budgets go by the name).
    app_id: str = ""


class SecretRecord(_Wire, kw_only=True):
    """A stored secret (``burst secret create``): its key names in the clear, its values
    only as an envelope (``burst_core.secrets``)."""

    workspace: str
    name: str
    keys: list[str]
    sealed: str
    created_at: float
    updated_at: float
    version: int = 1


class SecretsFetch(_Wire, kw_only=True):
    """An agent's core-NATS request for the secret values of a container it was placed
    (never stored). The answer is sealed to ``reply_key`` (X25519), so it is readable only
    by the asking agent, not by whoever else listens on NATS."""

    container_id: str
    agent_id: str
    workspace: str
    app: str
    function: str
    secrets: list[SecretSpec]
    reply_key: bytes


class SecretsFetched(_Wire, kw_only=True):
    error: str = ""  # why there are no values (an unknown secret, a key not in the ring)
    server_key: bytes = b""
    sealed: bytes = b""  # nonce + AES-GCM of the JSON values, under the X25519 shared key


# ---- codecs --------------------------------------------------------------------------
_encoder = msgspec.msgpack.Encoder()


def encode(obj: msgspec.Struct) -> bytes:
    return _encoder.encode(obj)


def decoder(tp: TypeForm[_T]) -> msgspec.msgpack.Decoder[_T]:
    """A msgpack decoder of ``tp`` (a Struct or a union of them), typed as what it decodes."""
    return msgspec.msgpack.Decoder(tp)


DeploymentRecordDecoder = decoder(DeploymentRecord)
AgentRecordDecoder = decoder(AgentRecord)
CallRecordDecoder = decoder(CallRecord)
TokenRecordDecoder = decoder(TokenRecord)
WorkspaceRecordDecoder = decoder(WorkspaceRecord)
AppVersionDecoder = decoder(AppVersion)
MapRecordDecoder = decoder(MapRecord)
ServiceHeartbeatDecoder = decoder(ServiceHeartbeat)
LedgerSnapshotDecoder = decoder(LedgerSnapshot)
LedgerStateDecoder = decoder(LedgerSnapshot | LedgerHeader)  # what "state" holds
LeaseRecordDecoder = decoder(LeaseRecord)
InputDecoder = decoder(Input)
OutputDecoder = decoder(Output)
LogLineDecoder = decoder(LogLine)
AgentMetricsDecoder = decoder(AgentMetrics)
ExecRequestDecoder = decoder(ExecRequest)
ExecAcceptedDecoder = decoder(ExecAccepted)
ExecOutputDecoder = decoder(ExecOutput)
ExecInputDecoder = decoder(ExecInput)
OutputItemDecoder = decoder(OutputItem)
InputAcceptedDecoder = decoder(InputAccepted)
AttemptChangedDecoder = decoder(AttemptChanged)
CallCancelledDecoder = decoder(CallCancelled)
AppEventDecoder = decoder(FunctionDeployed | AppRemoved)
AgentOrderDecoder = decoder(AgentOrder)
ContainerEventDecoder = decoder(ContainerEvent)
AgentHeartbeatDecoder = decoder(AgentHeartbeat)
AgentLostDecoder = decoder(AgentLost)
MeteringRecordDecoder = decoder(MeteringRecord)
BudgetDecoder = decoder(Budget)
BudgetStateDecoder = decoder(BudgetState)
WebhookEndpointDecoder = decoder(WebhookEndpoint)
WebhookDeliveryDecoder = decoder(WebhookDelivery)
WebhookLogEntryDecoder = decoder(WebhookLogEntry)
AlertStateDecoder = decoder(AlertState)
ScheduleStateDecoder = decoder(ScheduleState)
FunctionWaitingDecoder = decoder(FunctionWaiting)
ClientHeartbeatDecoder = decoder(ClientHeartbeat)
ClientObjectDecoder = decoder(ClientObject)
SecretRecordDecoder = decoder(SecretRecord)
SecretsFetchDecoder = decoder(SecretsFetch)
SecretsFetchedDecoder = decoder(SecretsFetched)
