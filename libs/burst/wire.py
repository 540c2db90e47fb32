"""The wire contract: every schema the SDK, the container shim and the services share.

Public and versioned: ``VERSION`` is this contract's version, and every message carries
``v`` (the version it was written under, omitted when 1). Same rules as
``burst_core.schemas``: tagged or plain ``msgspec`` Structs, new fields always with
defaults, a field's type never changes, unknown fields skipped, so older and newer
clients, shims and services read each other. It imports msgspec only (user code and the
shim import it).

Two protocols live here:

* the SDK's HTTP bodies (msgpack, ``application/vnd.burst+msgpack``);
* the agent <-> shim frames over a per-container unix socket: a 4-byte big-endian length,
  then one msgpack-encoded tagged frame.
"""

from __future__ import annotations

import re
import struct
from typing import Literal

import msgspec

MSGPACK = "application/vnd.burst+msgpack"
#: The version of this contract (bumped when a message changes in a way older readers must
#: know about; additions with defaults do not bump it).
VERSION = 1


#: The one rule for app, function, workspace and object names (they become parts of NATS
#: subjects and KV keys, so no '.', '*', '>', spaces or other characters those refuse).
IDENT_MAX = 63
_IDENT = re.compile(rf"[a-z0-9][a-z0-9_-]{{0,{IDENT_MAX - 1}}}")
IDENT_RULE = (
    f"1-{IDENT_MAX} characters: lowercase letters, digits, '-' and '_', starting with a "
    "letter or digit"
)
#: Longest value an error message quotes whole; a longer one is cut and its length given.
_QUOTE_MAX = 80


def quote_value(value: object) -> str:
    """``repr(value)``, cut short for a long string (a name of 100,000 characters is
    named by its start and its length, not echoed whole)."""
    if isinstance(value, str) and len(value) > _QUOTE_MAX:
        return f"{value[:_QUOTE_MAX]!r}... ({len(value)} characters)"
    return repr(value)


def check_ident(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid app/function/workspace name, else raise ValueError."""
    if not isinstance(value, str) or not _IDENT.fullmatch(value):
        raise ValueError(f"invalid {kind} name {quote_value(value)}: use {IDENT_RULE}")
    return value


#: An ephemeral app's id (``burst run``, ``with app.run():``): ``ap-`` and 16 hex digits.
#: It names the run everywhere a deployed app's name would (function keys, calls, logs,
#: containers); the run's app name is kept beside it. No deployed app may take this form.
_APP_ID = re.compile(r"ap-[0-9a-f]{16}")
#: A client's id (``cl-`` and 16 hex digits): its heartbeats keep its ephemeral apps and
#: objects alive.
_CLIENT_ID = re.compile(r"cl-[0-9a-f]{16}")


def is_app_id(value: str) -> bool:
    """Whether ``value`` is an ephemeral app's id rather than an app name."""
    return bool(_APP_ID.fullmatch(value))


def check_client_id(value: str) -> str:
    """Return ``value`` if it is a client id, else raise ValueError."""
    if not isinstance(value, str) or not _CLIENT_ID.fullmatch(value):
        raise ValueError(f"invalid client id {quote_value(value)}: expected 'cl-' and 16 "
                         "lowercase hex digits")
    return value


#: Known GPU types, canonical spellings; names are matched case-insensitively.
GPU_TYPES = ("T4", "L4", "A10G", "L40S", "A100-40GB", "A100-80GB", "H100", "H200", "B200")


class _Body(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An HTTP body or record; ``v`` is the contract version it was written under."""

    v: int = VERSION


class Resources(_Body):
    """What one container requests. Defaults are Modal's: 0.125 cores, 128 MiB."""

    cpu: float = 0.125
    memory_mb: int = 128
    gpu_type: str | None = None
    gpu_count: int = 0
    #: Hard memory limit (MiB) past which the container is killed; 0: the request.
    memory_limit_mb: int = 0


class RetryPolicy(_Body):
    max_retries: int = 0
    backoff_coefficient: float = 2.0
    initial_delay: float = 1.0
    max_delay: float = 60.0

    def delay(self, retry: int) -> float:
        """Seconds before retry number ``retry`` (1-based)."""
        return float(min(self.max_delay,
                         self.initial_delay * self.backoff_coefficient ** (retry - 1)))


class Schedule(_Body):
    """When a deployed function runs by itself: a cron expression in a timezone, or a
    fixed period in seconds (see :class:`burst.Cron`, :class:`burst.Period`)."""

    cron: str = ""
    timezone: str = "UTC"
    period: float = 0.0


class ImageStep(_Body):
    """One step of a :class:`burst.Image`, in order. ``kind`` names the builder method
    (``pip_install``, ``uv_pip_install``, ``pip_install_from_requirements``,
    ``pip_install_from_pyproject``, ``apt_install``, ``run_commands``, ``run_function``,
    ``env``, ``workdir``, ``entrypoint``, ``add_local_file``, ``add_local_dir``,
    ``add_local_python_source``)."""

    kind: str
    args: list[str] = msgspec.field(default_factory=list)
    env: dict[str, str] = msgspec.field(default_factory=dict)
    #: Destination path in the image (``workdir``, ``add_local_*``).
    path: str = ""
    #: Files of ``add_local_*`` steps: relative path -> content (carried in the deployment).
    files: dict[str, bytes] = msgspec.field(default_factory=dict)
    #: Options of the ``pip_install*`` and ``uv_pip_install`` steps, as Modal names them.
    index_url: str = ""
    extra_index_url: str = ""
    find_links: str = ""
    pre: bool = False
    extra_options: str = ""
    #: ``force_build=True``: a value new at each definition, so the step (and every step
    #: after it) is built again instead of taken from a cache.
    force_build: str = ""
    #: ``run_function``: the cloudpickled ``(function, args, kwargs)``.
    payload: bytes = b""
    #: The local file a step was read from (requirements, pyproject, Dockerfile), for
    #: messages; ``run_function``: the function's qualified name.
    source: str = ""
    #: ``add_local_file/dir(copy=False)`` (Modal's default): the files reach the container
    #: at its start rather than being a build step, so no build step may follow (as in
    #: Modal). Their content is no part of the image's hash: at deploy the SDK sends them
    #: as a bundle of their own (``bundle``, its sha256; ``files`` then empty), which the
    #: agent unpacks under ``<home>/local-files/`` and binds read-only as each container
    #: starts.
    mounted: bool = False
    bundle: str = ""


class ImageSpec(_Body):
    """A container image as the SDK declared it; ``content_hash`` names it on every agent."""

    #: ``debian_slim`` (the machine-built base) or ``registry`` (``from_registry(tag)``).
    base: str = "debian_slim"
    python_version: str = "3.11"
    registry_tag: str = ""
    #: ``from_registry(tag, add_python=...)``: the Python version to add to the image.
    add_python: str = ""
    #: ``debian_slim/from_registry(force_build=True)``: a value new at each definition, so
    #: every step on this base is built again (hashed, like a step's ``force_build``).
    force_build: str = ""
    steps: list[ImageStep] = msgspec.field(default_factory=list)
    content_hash: str = ""
    #: Names the image the same in the client and in its containers, where local files
    #: are not read (``Image.imports()`` tells its own image by it; ``BURST_IMAGE_ID``).
    ident: str = ""
    #: Top-level modules imported in ``with image.imports():`` blocks (not hashed): what a
    #: container of this image may import ahead of time.
    imports: list[str] = msgspec.field(default_factory=list)


class SecretSpec(_Body):
    """A secret a function's containers get as environment variables: a stored one by
    ``name`` (its keys checked against ``required_keys`` at deploy), or one made in code,
    whose ``values`` the SDK sends once and the gateway replaces by ``sealed`` (an
    envelope, see ``burst_core.secrets``) before anything is stored."""

    name: str = ""
    required_keys: list[str] = msgspec.field(default_factory=list)
    values: dict[str, str] = msgspec.field(default_factory=dict)
    sealed: str = ""


#: A web endpoint's label (and the URL part a function's name becomes): URL-safe.
LABEL_MAX = 63
_LABEL = re.compile(rf"[a-z0-9](?:[a-z0-9-]{{0,{LABEL_MAX - 2}}}[a-z0-9])?")
LABEL_RULE = (f"1-{LABEL_MAX} characters: lowercase letters, digits and '-', starting and "
              "ending with a letter or digit")


def check_label(value: object) -> str:
    """Return ``value`` if it is a valid web endpoint label, else raise ValueError."""
    if not isinstance(value, str) or not _LABEL.fullmatch(value):
        raise ValueError(f"invalid web endpoint label {quote_value(value)}: use {LABEL_RULE}")
    return value


class WebEndpoint(_Body):
    """A web endpoint of a function (or of one method of a class): how the shim serves it
    and the URL part it answers under (``/{workspace}/{app}/{name}/...``)."""

    #: ``fastapi`` (``fastapi_endpoint``: the function becomes one route), ``asgi``
    #: (``asgi_app``: it returns an ASGI app), ``wsgi`` (``wsgi_app``: a WSGI app) or
    #: ``web_server`` (it starts a server listening on ``port`` in the container). A
    #: string, not a Literal, so that a later kind does not break older readers.
    kind: str
    #: The URL part: the label, else the function's name (``Cls-method`` for a method).
    name: str
    #: The class method that serves it; "" for a function.
    method: str = ""
    #: ``fastapi`` only: the HTTP method of its one route, and whether /docs is served.
    http_method: str = "GET"
    docs: bool = False
    label: str = ""
    requires_proxy_auth: bool = False
    #: ``web_server`` only: the port it listens on, and how long it may take to listen.
    port: int = 0
    startup_timeout: float = 0.0


#: The kinds of web endpoint this version serves.
WEB_KINDS = ("fastapi", "asgi", "wsgi", "web_server")


class VolumeMount(_Body):
    """A volume a function's containers see at ``path`` (an absolute directory)."""

    name: str
    path: str
    read_only: bool = False
    #: ``Volume.from_name(create_if_missing=True)``: the deploy makes it if need be.
    create_if_missing: bool = False


class FunctionSpec(_Body):
    """One function of an app, as the SDK declared it."""

    name: str
    module: str
    qualname: str
    resources: Resources = msgspec.field(default_factory=Resources)
    # Ordered fallbacks tried at scale-up after ``resources``.
    gpu_fallbacks: list[Resources] = msgspec.field(default_factory=list)
    timeout: float = 300.0
    scaledown_window: float = 60.0
    min_containers: int = 0
    max_containers: int | None = None
    buffer_containers: int = 0
    max_inputs: int = 1  # concurrent inputs per container
    target_inputs: int = 0  # what the autoscaler aims at per container (0: max_inputs)
    nonpreemptible: bool = False
    is_generator: bool = False
    retries: RetryPolicy | None = None
    is_class: bool = False  # an @app.cls: payloads name the method and parameters
    schedule: Schedule | None = None  # fired by the scheduler, on deployed apps only
    image: ImageSpec | None = None  # None: the runtime's default image
    #: In order: a later secret's key overrides an earlier one's.
    secrets: list[SecretSpec] = msgspec.field(default_factory=list)
    block_network: bool = False  # True: its containers get no network at all
    #: Its web endpoints (one for a function; one per decorated method of a class).
    web: list[WebEndpoint] = msgspec.field(default_factory=list)
    #: Volumes mounted in its containers (the App's, then the function's).
    volumes: list[VolumeMount] = msgspec.field(default_factory=list)


# ---- HTTP bodies (SDK <-> gateway) ---------------------------------------------------
class DeployRequest(_Body):
    app: str
    bundle_hash: str
    functions: list[FunctionSpec]
    #: An ephemeral run of app ``app``: it gets an id of its own (``DeployResponse.app``)
    #: and lives while ``client_id`` heartbeats ("" with ``ephemeral``: detached, until
    #: ``burst app stop``).
    ephemeral: bool = False
    client_id: str = ""
    #: A ``burst serve`` run (with ``ephemeral``): its id is ``{app}-dev`` (``dev_name``),
    #: so its URLs end in ``-dev`` and stay the same when a save deploys it again.
    serve: bool = False
    #: How the containers of the version it replaces leave (``DEPLOY_STRATEGIES``):
    #: "rolling" (they finish what they run, take no new calls, then stop) or "recreate"
    #: (stopped at once; what they ran runs again on the new version).
    strategy: str = "rolling"


DEPLOY_STRATEGIES = ("rolling", "recreate")


def check_strategy(strategy: str) -> str:
    if strategy not in DEPLOY_STRATEGIES:
        raise ValueError(f"unknown deploy strategy {strategy!r}: expected "
                         f"{' or '.join(DEPLOY_STRATEGIES)}")
    return strategy


def dev_name(app: str) -> str:
    """The id of a ``burst serve`` run of ``app``: ``{app}-dev`` (the name cut to 59)."""
    return f"{app[:59]}-dev"


class DeployResponse(_Body):
    app: str  # the app's name; an ephemeral run's id
    workspace: str
    deployment_id: str
    functions: list[str]
    name: str = ""  # an ephemeral run's app name
    #: The URL of each web endpoint, by its name (``WebEndpoint.name``).
    web_urls: dict[str, str] = msgspec.field(default_factory=dict)
    #: A deployed app's version (1 for its first deploy); 0 for an ephemeral run.
    version: int = 0
    #: Functions whose containers no agent of the cluster could hold, each with why
    #: (naming the largest agent): their calls wait (then fail, past the scheduler's
    #: ``BURST_UNSATISFIABLE_TIMEOUT``).
    warnings: list[str] = msgspec.field(default_factory=list)


#: Arguments and results up to this size travel inline (NATS messages stay small);
#: bigger ones go through the object store, up to MAX_PAYLOAD.
INLINE_PAYLOAD_LIMIT = 512 << 10
MAX_PAYLOAD = 256 << 20


def new_submission_id() -> str:
    """A random submission id: 12 hex digits of the time (ms), then 20 random ones."""
    import os
    import time

    return f"{int(time.time() * 1000):012x}{os.urandom(10).hex()}"


class CallRequest(_Body):
    payload: bytes  # cloudpickle of (args, kwargs)
    #: sha256 of a blob uploaded with PUT /v1/blobs/{sha256}, for payloads above the
    #: inline limit (then ``payload`` is empty).
    payload_ref: str = ""
    #: The SDK's random id of this submission (:func:`new_submission_id`): the same
    #: request sent again (to another gateway, after a failure) makes the same call,
    #: which runs once.
    submission_id: str = ""


CallStatus = Literal["pending", "success", "failure", "timeout", "terminated", "internal"]


class CallResponse(_Body):
    call_id: str
    status: CallStatus
    payload: bytes = b""
    error_type: str = ""
    error_message: str = ""
    traceback: str = ""
    log_lines: int = 0
    #: The attempt that answered (``log_lines`` are its lines; a retry's are its own).
    attempt: int = 1
    payload_format: str = "pickle"
    payload_ref: str = ""  # the result is the blob with this sha256 (GET /v1/blobs/{ref})


class CallBatchRequest(_Body):
    """Many calls of one function at once (a page of a map's inputs)."""

    payloads: list[bytes]
    #: Per payload, a blob's sha256 when that payload is above the inline limit ("" else).
    payload_refs: list[str] = msgspec.field(default_factory=list)
    #: As :attr:`CallRequest.submission_id`, for the whole batch (call i: ``<id>.<i>``).
    submission_id: str = ""
    #: The calls are transient (the SDK's ``.map``, which takes each result as it comes):
    #: their results are kept ``BURST_TRANSIENT_RESULT_RETENTION`` seconds (600 by
    #: default), not the full result retention. Ignored for calls from a container.
    transient: bool = False


class CallRef(_Body):
    call_id: str
    attempt_token: str = ""


class CallBatchResponse(_Body):
    calls: list[CallRef]


class CallWaitRequest(_Body):
    """Wait for any of these calls; answers with those finished (none if ``wait`` passes)."""

    calls: list[CallRef]
    wait: float = 0.0
    #: Once one call is finished, wait up to this long for more (fewer round trips).
    linger: float = 0.0


class CallWaitResponse(_Body):
    results: list[CallResponse]


class CallItemsResponse(_Body):
    """A page of a generator call's items; ``cursor`` asks for the next page."""

    items: list[bytes] = msgspec.field(default_factory=list)
    cursor: int = 0
    #: Set once every item is listed: the call's final answer (its error, if it failed).
    final: CallResponse | None = None


# ---- Dict and Queue (over HTTP, or through the agent from inside a container) ------
DictOp = Literal["get", "put", "pop", "contains", "len", "keys", "items", "clear", "ensure",
                 "delete"]
QueueOp = Literal["put", "get", "len", "clear", "ensure", "delete"]


class DictRequest(_Body):
    name: str
    op: DictOp
    key: bytes = b""  # cloudpickle of the key
    value: bytes = b""  # cloudpickle of the value
    create_if_missing: bool = True
    #: ``put`` only: leave an existing value in place (``found`` says whether it was written).
    skip_if_exists: bool = False
    #: ``ensure`` and ``delete`` of an ephemeral Dict: the client whose heartbeats keep it.
    client_id: str = ""


class DictResponse(_Body):
    found: bool = False
    value: bytes = b""
    count: int = 0
    keys: list[bytes] = msgspec.field(default_factory=list)
    values: list[bytes] = msgspec.field(default_factory=list)  # ``items``: one per key


class QueueRequest(_Body):
    name: str
    op: QueueOp
    values: list[bytes] = msgspec.field(default_factory=list)
    n: int = 1
    #: Seconds ``get`` waits for an item; None waits up to the server's longest wait.
    timeout: float | None = 0.0
    create_if_missing: bool = True
    #: A sub-queue of its own (Modal's ``partition=``); "" is the default partition.
    partition: str = ""
    #: ``len`` only: count the items of every partition.
    total: bool = False
    #: ``ensure`` and ``delete`` of an ephemeral Queue: the client whose heartbeats keep it.
    client_id: str = ""


class QueueResponse(_Body):
    values: list[bytes] = msgspec.field(default_factory=list)
    count: int = 0


dict_response_decoder = msgspec.msgpack.Decoder(DictResponse)
queue_response_decoder = msgspec.msgpack.Decoder(QueueResponse)
dict_request_decoder = msgspec.msgpack.Decoder(DictRequest)
queue_request_decoder = msgspec.msgpack.Decoder(QueueRequest)

VolumeOp = Literal["ensure", "create", "info", "list", "delete", "listdir", "entry", "chunk",
                   "missing", "put_chunk", "commit", "remove", "copy", "mount_commit",
                   "mount_reload"]


def volume_file_id(chunks: list[str]) -> str:
    """A volume file's content id from its chunks' sha256s: a file of one chunk is named
    by that chunk's hash (the sha256 of its bytes), a longer one by the sha256 of its
    chunk hashes (so no second pass over its bytes is needed)."""
    if len(chunks) == 1:
        return chunks[0]
    import hashlib

    return hashlib.sha256("\n".join(chunks).encode()).hexdigest()


class VolumeFile(_Body):
    """One file of a volume's tree: its content id (``volume_file_id`` of its chunks) and
    the chunks it is stored in, each named by its sha256 (a file of one chunk lists none
    in the tree: its id is its chunk's)."""

    size: int
    sha256: str
    chunks: list[str] = msgspec.field(default_factory=list)
    mtime: float = 0.0
    mode: int = 0o644


class VolumeEntry(_Body):
    """A listed path: a file or a directory (directories are implied by their files)."""

    path: str
    type: Literal["file", "directory"]
    size: int = 0
    mtime: float = 0.0


class VolumeInfo(_Body):
    name: str
    version: int
    files: int
    size: int
    created_at: float
    updated_at: float


class VolumeRequest(_Body):
    """One operation on a named volume of the caller's workspace (HTTP ``/v1/volumes``,
    or from a container, a ``kind="volume"`` platform request)."""

    op: VolumeOp
    name: str = ""
    create_if_missing: bool = False
    path: str = ""
    recursive: bool = False
    #: ``chunk``/``missing``: chunk hashes; ``copy``: the source paths.
    items: list[str] = msgspec.field(default_factory=list)
    #: ``put_chunk``: a chunk's bytes.
    data: bytes = b""
    #: ``commit``: path -> new file (None: remove the path and everything below it).
    changes: dict[str, VolumeFile | None] = msgspec.field(default_factory=dict)
    #: ``commit``: replace files that exist (else an error naming the first).
    allow_overwrite: bool = True
    #: ``create`` and ``delete`` of an ephemeral volume: the client whose heartbeats keep it.
    client_id: str = ""


class VolumeResponse(_Body):
    version: int = 0
    info: VolumeInfo | None = None
    volumes: list[VolumeInfo] = msgspec.field(default_factory=list)
    entries: list[VolumeEntry] = msgspec.field(default_factory=list)
    file: VolumeFile | None = None
    items: list[str] = msgspec.field(default_factory=list)
    data: bytes = b""


volume_request_decoder = msgspec.msgpack.Decoder(VolumeRequest)
volume_response_decoder = msgspec.msgpack.Decoder(VolumeResponse)


class ApiRequest(_Body):
    """A request of the SDK's client to the cluster's API made from inside a container
    (``kind="api"`` platform request): the agent answers it as the gateway would, in the
    container's workspace. ``call_id`` is the call the requesting code runs (the parent
    of any call it makes)."""

    method: str
    path: str
    params: dict[str, str] = msgspec.field(default_factory=dict)
    body: bytes = b""
    call_id: str = ""


class ApiResponse(_Body):
    status: int
    body: bytes = b""


# ---- agent <-> shim frames -----------------------------------------------------------
class _Frame(msgspec.Struct, tag=True, kw_only=True, omit_defaults=True):
    v: int = VERSION


class RunInput(_Frame, kw_only=True):
    input_id: str
    call_id: str
    attempt: int = 1
    attempt_token: str = ""
    payload: bytes
    #: "pickle" (cloudpickle from the SDK) or "json" (``{"args", "kwargs"}`` over HTTP).
    payload_format: str = "pickle"


class CancelInput(_Frame, kw_only=True):
    input_id: str


class Shutdown(_Frame, kw_only=True):
    """Run ``@exit`` and leave; the agent kills the process after its grace period."""

    reason: str = "stop"


class Ready(_Frame, kw_only=True):
    pid: int
    #: The shim runs inputs one at a time in the order they come (a plain function with
    #: max_inputs 1, neither async nor batched): the agent may send it the next ones
    #: before the one running is done (they wait in line).
    in_order: bool = False
    #: When the shim's main began, the user's module was imported, and ``@enter`` was
    #: done (seconds since the epoch): the agent's spans of a traced cold start.
    booted_at: float = 0.0
    imported_at: float = 0.0
    entered_at: float = 0.0


class Alive(_Frame, kw_only=True):
    """Sent every few seconds by a thread of the shim: a frozen or wedged container stops
    sending it, and the agent hands its inputs to another container."""


class StartupFailed(_Frame, kw_only=True):
    error_type: str
    error_message: str
    traceback: str = ""


class InputDone(_Frame, kw_only=True):
    input_id: str
    status: Literal["success", "failure", "timeout", "terminated"]
    payload: bytes = b""
    error_type: str = ""
    error_message: str = ""
    traceback: str = ""
    log_lines: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0


class StreamItem(_Frame, kw_only=True):
    """One item yielded by a generator function (streamed output)."""

    input_id: str
    index: int
    payload: bytes


class Log(_Frame, kw_only=True):
    stream: Literal["stdout", "stderr"] = "stdout"
    line: str
    call_id: str = ""


class PlatformRequest(_Frame, kw_only=True):
    """A platform call from user code (a Dict or Queue operation, or a request of the
    SDK's client: calls), performed by the agent in the container's workspace: containers
    have no route and no token to the cluster."""

    req_id: int
    kind: Literal["dict", "queue", "api", "volume"]
    body: bytes  # a msgpack DictRequest, QueueRequest or ApiRequest


class PlatformResponse(_Frame, kw_only=True):
    req_id: int
    body: bytes = b""  # a msgpack DictResponse, QueueResponse or ApiResponse
    error_type: str = ""  # an API error type (burst.exception.ERROR_TYPES) when it failed
    error_message: str = ""


# ---- web requests (gateway -> agent over core NATS -> shim, and back) ------------------
class WebRequest(_Frame, kw_only=True):
    """The head of an HTTP request to a web endpoint (and its body's first chunk)."""

    req_id: str
    endpoint: str  # WebEndpoint.name
    method: str
    path: str  # below root_path, percent-decoded (ASGI's ``path``)
    raw_path: bytes = b""
    query_string: bytes = b""
    root_path: str = ""  # /{workspace}/{app}/{endpoint}
    headers: list[tuple[bytes, bytes]] = msgspec.field(default_factory=list)
    scheme: str = "http"
    http_version: str = "1.1"
    client: tuple[str, int] | None = None
    server: tuple[str, int] | None = None
    body: bytes = b""
    more_body: bool = False
    #: Where the agent sends the response frames (the gateway's inbox for this request).
    reply: str = ""
    #: A WebSocket handshake (ASGI ``websocket`` scope) rather than an HTTP request.
    websocket: bool = False
    #: Offered by an agent where it waits for a slot (the whole body with it): taken only
    #: by an agent with a container that runs it at once, else declined (``subject`` "").
    free_only: bool = False


class WebRequestBody(_Frame, kw_only=True):
    """The next chunk of a request's body."""

    req_id: str
    body: bytes = b""
    more_body: bool = False


class WebCancel(_Frame, kw_only=True):
    """The client went away (or sent too much): stop serving the request."""

    req_id: str
    reason: str = "disconnect"


class WebAccepted(_Frame, kw_only=True):
    """An agent took the request: its body chunks and cancel go to ``subject`` ("": it
    did not take it after all, its containers being gone; the gateway offers it again)."""

    req_id: str
    subject: str
    #: No container had a free slot: it waits at the agent (the gateway tells the
    #: scheduler the function needs more containers).
    queued: bool = False


class WebMoved(_Frame, kw_only=True):
    """From the agent that took a request which had not started: another agent's free
    container runs it; its cancel (and WebSocket messages) now go to ``subject``."""

    req_id: str
    subject: str


class WebResponseStart(_Frame, kw_only=True):
    req_id: str
    status: int
    headers: list[tuple[bytes, bytes]] = msgspec.field(default_factory=list)


class WebResponseBody(_Frame, kw_only=True):
    req_id: str
    body: bytes = b""
    more_body: bool = False


class WebEnd(_Frame, kw_only=True):
    """The request is over: the app returned (``error`` "") or failed; the gateway answers
    ``status`` if no response had started (502: the container or agent went away)."""

    req_id: str
    error: str = ""
    status: int = 0


class WebSocketAccept(_Frame, kw_only=True):
    """The app accepted a WebSocket (from the shim)."""

    req_id: str
    subprotocol: str | None = None
    headers: list[tuple[bytes, bytes]] = msgspec.field(default_factory=list)


class WebSocketMessage(_Frame, kw_only=True):
    """One WebSocket message, either way: ``text`` or ``data``."""

    req_id: str
    text: str | None = None
    data: bytes | None = None


class WebSocketClose(_Frame, kw_only=True):
    """A WebSocket closed, either way (from the app: it closes; from the client: it left)."""

    req_id: str
    code: int = 1000
    reason: str = ""


class WebAlive(_Frame, kw_only=True):
    """From the agent, every ``BURST_WEB_KEEPALIVE`` s while it holds the request."""

    req_id: str


ToShim = (RunInput | CancelInput | Shutdown | PlatformResponse | WebRequest | WebRequestBody
          | WebCancel | WebSocketMessage | WebSocketClose)
FromShim = (Ready | StartupFailed | InputDone | StreamItem | Log | PlatformRequest | Alive
            | WebResponseStart | WebResponseBody | WebEnd | WebSocketAccept | WebSocketMessage
            | WebSocketClose)
#: Frames of a web request between the gateway and the agent (core NATS messages).
WebMessage = (WebRequest | WebRequestBody | WebCancel | WebAccepted | WebResponseStart
              | WebResponseBody | WebEnd | WebAlive | WebSocketAccept | WebSocketMessage
              | WebSocketClose | WebMoved)
#: Web frames to the shim (the shim's web host takes them).
WEB_TO_SHIM = (WebRequest, WebRequestBody, WebCancel, WebSocketMessage, WebSocketClose)
#: Web frames from the shim that the agent relays to the gateway as they are.
WEB_FROM_SHIM = (WebResponseStart, WebResponseBody, WebEnd, WebSocketAccept, WebSocketMessage,
                 WebSocketClose)
web_decoder = msgspec.msgpack.Decoder(WebMessage)
_web_batch_decoder = msgspec.msgpack.Decoder(list[WebMessage])


def decode_web(data: bytes) -> list[WebMessage]:
    """The frames of one message between the gateway and an agent: one frame (a msgpack
    map), or several sent together (a msgpack array of them)."""
    if data and (0x90 <= data[0] <= 0x9F or data[0] in (0xDC, 0xDD)):
        return _web_batch_decoder.decode(data)
    return [web_decoder.decode(data)]

_enc = msgspec.msgpack.Encoder()
to_shim_decoder = msgspec.msgpack.Decoder(ToShim)
from_shim_decoder = msgspec.msgpack.Decoder(FromShim)
_LEN = struct.Struct(">I")
MAX_FRAME = MAX_PAYLOAD + (1 << 20)


def frame(msg: msgspec.Struct) -> bytes:
    body = _enc.encode(msg)
    return _LEN.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    (n,) = _LEN.unpack(header)
    if n > MAX_FRAME:
        raise ValueError(f"frame of {n} bytes exceeds the {MAX_FRAME} byte limit")
    return int(n)


encode = _enc.encode
call_response_decoder = msgspec.msgpack.Decoder(CallResponse)
call_batch_response_decoder = msgspec.msgpack.Decoder(CallBatchResponse)
call_wait_response_decoder = msgspec.msgpack.Decoder(CallWaitResponse)
call_items_response_decoder = msgspec.msgpack.Decoder(CallItemsResponse)
deploy_response_decoder = msgspec.msgpack.Decoder(DeployResponse)
api_request_decoder = msgspec.msgpack.Decoder(ApiRequest)
api_response_decoder = msgspec.msgpack.Decoder(ApiResponse)
