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
    (``pip_install``, ``apt_install``, ``run_commands``, ``env``, ``workdir``,
    ``add_local_file``, ``add_local_dir``, ``add_local_python_source``)."""

    kind: str
    args: list[str] = msgspec.field(default_factory=list)
    env: dict[str, str] = msgspec.field(default_factory=dict)
    #: Destination path in the image (``workdir``, ``add_local_*``).
    path: str = ""
    #: Files of ``add_local_*`` steps: relative path -> content (carried in the deployment).
    files: dict[str, bytes] = msgspec.field(default_factory=dict)


class ImageSpec(_Body):
    """A container image as the SDK declared it; ``content_hash`` names it on every agent."""

    #: ``debian_slim`` (the machine-built base) or ``registry`` (``from_registry(tag)``).
    base: str = "debian_slim"
    python_version: str = "3.11"
    registry_tag: str = ""
    steps: list[ImageStep] = msgspec.field(default_factory=list)
    content_hash: str = ""


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


# ---- HTTP bodies (SDK <-> gateway) ---------------------------------------------------
class DeployRequest(_Body):
    app: str
    bundle_hash: str
    functions: list[FunctionSpec]
    ephemeral: bool = False


class DeployResponse(_Body):
    app: str
    workspace: str
    deployment_id: str
    functions: list[str]


#: Arguments and results up to this size travel inline (NATS messages stay small);
#: bigger ones go through the object store, up to MAX_PAYLOAD.
INLINE_PAYLOAD_LIMIT = 512 << 10
MAX_PAYLOAD = 256 << 20


class CallRequest(_Body):
    payload: bytes  # cloudpickle of (args, kwargs)
    #: sha256 of a blob uploaded with PUT /v1/blobs/{sha256}, for payloads above the
    #: inline limit (then ``payload`` is empty).
    payload_ref: str = ""


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


class QueueResponse(_Body):
    values: list[bytes] = msgspec.field(default_factory=list)
    count: int = 0


dict_response_decoder = msgspec.msgpack.Decoder(DictResponse)
queue_response_decoder = msgspec.msgpack.Decoder(QueueResponse)
dict_request_decoder = msgspec.msgpack.Decoder(DictRequest)
queue_request_decoder = msgspec.msgpack.Decoder(QueueRequest)


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
    """A platform call from user code (a Dict or Queue operation), performed by the agent
    in the container's workspace: containers have no route and no token to the cluster."""

    req_id: int
    kind: Literal["dict", "queue"]
    body: bytes  # a msgpack DictRequest or QueueRequest


class PlatformResponse(_Frame, kw_only=True):
    req_id: int
    body: bytes = b""  # a msgpack DictResponse or QueueResponse
    error_type: str = ""  # an API error type (burst.exception.ERROR_TYPES) when it failed
    error_message: str = ""


ToShim = RunInput | CancelInput | Shutdown | PlatformResponse
FromShim = Ready | StartupFailed | InputDone | StreamItem | Log | PlatformRequest | Alive

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
