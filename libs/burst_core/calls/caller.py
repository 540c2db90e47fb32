"""Making calls and waiting for their outputs, for whoever calls: the gateway (a client's
HTTP request) and the agent (a call from user code inside a container). One
:class:`Caller` per process holds the NATS handles, the output router and the budget
guard; its methods take the caller's workspace and never trust a call id alone (a call of
another workspace is not found).

Invariants:
- an input is published only after its output future (or group) is registered, so no
  output can be missed;
- a hard budget that is spent refuses the call before anything is written;
- a waited-on call without an idempotency key and without a parent gets its record only
  if the wait ends before the result (see :meth:`Caller.call_once`); a call made from a
  container always gets its record (the call graph reads it);
- such a waited-on call, and each call of a batch marked transient (the SDK's maps), is
  transient: its id says so (``names.is_transient_call``), and its record and output live
  in the transient bucket and stream, kept ``BURST_TRANSIENT_RESULT_RETENTION`` seconds
  (a record read again while its call runs is written again: :meth:`Caller.keep_record`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from burst.exception import (
    IdempotencyKeyReusedError,
    InvalidError,
    NotFoundError,
    PayloadTooLargeError,
)
from burst.wire import (
    INLINE_PAYLOAD_LIMIT,
    MAX_PAYLOAD,
    CallRef,
    CallResponse,
    CallWaitRequest,
)
from burst_core import bus, logs, names
from burst_core import calls as call_store
from burst_core.calls import (
    CallBuckets,
    Signals,
    call_created_at,
    check_submission_id,
    new_call_id,
)
from burst_core.calls.guard import BudgetGuard
from burst_core.calls.outputs import RECENT_AGE, RECENT_MAX, Group, OutputRouter
from burst_core.schemas import (
    CallCancelled,
    CallRecord,
    CallRecordDecoder,
    DeploymentRecord,
    Output,
    OutputItem,
    OutputItemDecoder,
    encode,
)

log = logs.get("burst.calls")

WRONG_LAST_SEQUENCE = 10071
#: A waited-on call older than this (s) is also looked up in the stream, at most this many
#: per wait request, in case its output left this process's in-memory window.
STREAM_CHECK_AGE = 30.0
STREAM_CHECKS_PER_WAIT = 100

#: Most calls one batch request may create, and most calls one wait request may name.
MAX_BATCH = 1000
#: Highest items cursor (a stream sequence: NATS takes 64 bits, and reads from the next).
MAX_CURSOR = (1 << 64) - 2
#: Most nodes a call graph lists, and most parents followed up to its root.
MAX_GRAPH_NODES = 10_000
MAX_GRAPH_DEPTH = 100

Deployments = Callable[[str, str], Awaitable[DeploymentRecord | None]]


def from_output(out: Output) -> CallResponse:
    return CallResponse(
        call_id=out.call_id, status=out.status, payload=out.payload, error_type=out.error_type,
        error_message=out.error_message, traceback=out.traceback, log_lines=out.log_lines,
        attempt=out.attempt,
        payload_format=out.payload_format, payload_ref=out.payload_ref,
    )


def check_ref(ref: str) -> str:
    if len(ref) != 64 or any(c not in "0123456789abcdef" for c in ref):
        raise InvalidError(f"invalid blob reference {ref!r}: expected a sha256 (64 hex digits)")
    return ref


def valid_call_id(call_id: str) -> bool:
    return (call_id.startswith("fc-") and len(call_id) == 35
            and all(c in "0123456789abcdef" for c in call_id[3:]))


def request_hash(fn: str, payload: bytes, fmt: str, ref: str) -> str:
    """What an ``Idempotency-Key`` is bound to: the function and the call's arguments (as
    stored, so a JSON body differing only in spacing is the same)."""
    h = hashlib.sha256(f"{fn}\0{fmt}\0{ref}\0".encode())
    h.update(payload)
    return h.hexdigest()


@dataclass(frozen=True)
class Parent:
    """The call a container was running when it made a call: its id and the function
    keys of it and of its ancestors that wait for it, root first (see ``Input.lineage``;
    a spawned call starts a new lineage: nobody is known to wait for it)."""

    call_id: str
    lineage: list[str]


def children_key(parent_call_id: str, first_child: str) -> str:
    """The calls KV key listing children of a parent (those made by one submit)."""
    return f"{parent_call_id}.{first_child}"


def _give_up(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_result(None)


class Caller:
    """Submit calls, wait for them, read a generator's items, cancel; in a workspace."""

    #: The record buckets (:meth:`CallBuckets.of` a call id); ``calls_kv`` is the full one.
    buckets: CallBuckets
    calls_kv: KeyValue
    idempotency_kv: KeyValue
    outputs: OutputRouter
    signals: Signals

    def __init__(self, nc: NATS, js: JetStreamContext, deployments: Deployments, *,
                 max_sync_wait: float, signal_interval: float,
                 recent_outputs: int = RECENT_MAX, recent_outputs_age: float = RECENT_AGE) -> None:
        self.nc, self.js = nc, js
        self.recent_outputs, self.recent_outputs_age = recent_outputs, recent_outputs_age
        self.deployments = deployments
        self.max_sync_wait = max_sync_wait
        self.signal_interval = signal_interval
        self.started_at = time.time()
        self.guard = BudgetGuard(js)
        self._blobs: ObjectStore | None = None

    async def start(self) -> None:
        self.buckets = await CallBuckets.open(self.js)
        self.calls_kv = self.buckets.full
        self.idempotency_kv = await self.js.key_value(names.KV_IDEMPOTENCY)
        self.outputs = OutputRouter(self.js, recent_max=self.recent_outputs,
                                    recent_age=self.recent_outputs_age)
        self.signals = Signals(self.nc, self.signal_interval,
                               answered=lambda call_id: self.outputs.recent(call_id) is not None)
        await self.outputs.start()
        await self.outputs.follow_attempts(self.nc)
        self.started_at = time.time()

    async def stop(self) -> None:
        await self.guard.stop()
        await self.outputs.stop()
        await self.signals.flush()

    # ---- lookups -------------------------------------------------------------------
    async def function(self, workspace: str, app: str, fn: str) -> DeploymentRecord:
        """The deployment of ``app`` holding ``fn``, or NotFoundError naming what is missing."""
        dep = await self.deployments(workspace, app)
        if dep is None:
            raise NotFoundError(f"app {app!r} is not deployed in workspace {workspace!r}")
        if not any(f.name == fn for f in dep.functions):
            known = ", ".join(f.name for f in dep.functions)
            raise NotFoundError(f"app {app!r} has no function {fn!r} (it has: {known})")
        return dep

    async def record(self, call_id: str, workspace: str) -> CallRecord | None:
        """The call's record, if the call exists and belongs to ``workspace``.

        A call answered within its synchronous wait has no record (see :meth:`call_once`)
        unless a retry made one: its one attempt's output stands in for it.
        """
        if not valid_call_id(call_id):
            return None
        raw, _ = await bus.kv_get(self.buckets.of(call_id), call_id)
        if raw is None:
            out = self.outputs.recent(call_id) or await self.outputs.fetch(call_id, 1)
            if out is None or out.attempt != 1 or out.workspace != workspace:
                return None
            return CallRecord(call_id=call_id, workspace=workspace, app="", function="",
                              input_id=out.input_id, attempt=1, attempt_token=out.attempt_token,
                              created_at=call_created_at(call_id))
        rec = CallRecordDecoder.decode(raw)
        return rec if rec.workspace == workspace else None

    # ---- blobs ---------------------------------------------------------------------
    async def blob_store(self) -> ObjectStore:
        if self._blobs is None:
            self._blobs = await self.js.object_store(names.OBJ_BLOBS)
        return self._blobs

    async def blob_exists(self, workspace: str, ref: str) -> bool:
        """Whether ``workspace`` stored the blob ``ref`` (another workspace's copy does not
        count: blobs are scoped to their workspace)."""
        try:
            await (await self.blob_store()).get_info(names.blob_name(workspace, ref))
            return True
        except nats.js.errors.NotFoundError:
            return False

    async def read_blob(self, workspace: str, ref: str) -> bytes:
        """The blob ``ref`` of ``workspace``; NotFoundError when that workspace has none
        (the same answer whether or not another workspace stored the same bytes)."""
        try:
            res = await (await self.blob_store()).get(names.blob_name(workspace, ref))
        except nats.js.errors.NotFoundError:
            raise NotFoundError(
                f"blob {ref} not found (blobs are kept as long as results)") from None
        return res.data or b""

    async def store_blob(self, workspace: str, data: bytes) -> str:
        """Store ``data`` as a blob of ``workspace``; returns its reference (sha256)."""
        if len(data) > MAX_PAYLOAD:
            raise PayloadTooLargeError(f"payload of {len(data)} bytes exceeds the {MAX_PAYLOAD} "
                                       f"byte ({MAX_PAYLOAD >> 20} MiB) limit")
        ref = hashlib.sha256(data).hexdigest()
        if not await self.blob_exists(workspace, ref):
            await (await self.blob_store()).put(names.blob_name(workspace, ref), data)
        return ref

    async def inline_result(self, workspace: str, resp: CallResponse) -> CallResponse:
        """A JSON caller's result inline, also when it was stored as a blob (of the call's
        ``workspace``, the caller's own)."""
        if resp.payload_ref and resp.payload_format == "json":
            resp.payload, resp.payload_ref = await self.read_blob(workspace, resp.payload_ref), ""
        return resp

    # ---- submitting ----------------------------------------------------------------
    async def submit_shell(self, workspace: str, dep: DeploymentRecord, fn: str,
                           call_id: str) -> CallRecord:
        """A ``burst shell`` session of ``fn`` (call ``call_id``): a new container is
        placed for it (see :func:`burst_core.calls.create_shell`)."""
        await self.guard.check(workspace, dep.name or dep.app, fn)
        rec, inp = call_store.build(workspace, dep.app, fn, dep.deployment_id, b"",
                                    names.SHELL_FORMAT, time.time(), call_id=call_id)
        await call_store.create_shell(self.js, self.calls_kv, rec, inp)
        return rec

    async def submit(self, workspace: str, dep: DeploymentRecord, fn: str,
                     payloads: list[bytes], register: bool, payload_format: str = "pickle",
                     call_id: str | None = None, refs: list[str] | None = None,
                     records: bool = True, parent: Parent | None = None,
                     submission: str = "", duplicates: set[str] | None = None,
                     transient: bool = False) -> list[tuple[CallRecord, Any]]:
        """Create one call per payload: its input (JetStream) and, with ``records``, its
        record (KV); answers each call's record and output future.

        A request names 1 to ``MAX_BATCH`` payloads. With ``parent`` (a call made from
        inside a container) every call gets its record
        and the parent's list of children (one KV entry per submit) names them. With
        ``transient`` (and no ``parent``: a container's calls are never transient) the
        calls are transient (see the module's invariants).

        With ``register`` the output futures exist before any input is published, so no
        output can be missed. All KV writes and publishes go out concurrently.
        """
        if not 1 <= len(payloads) <= MAX_BATCH:
            raise InvalidError(f"a batch holds 1 to {MAX_BATCH} calls, got {len(payloads)}")
        # 402 while a hard budget is spent (a run of app X is covered by X's budgets)
        await self.guard.check(workspace, dep.name or dep.app, fn)
        fn_key = names.function_key(workspace, dep.app, fn)
        now = time.time()
        if submission:  # one id per request: call i of a batch is "<id>.<i>"
            check_submission_id(submission, now)
            subs = [submission] if len(payloads) == 1 else \
                [f"{submission}.{i}" for i in range(len(payloads))]
        else:
            subs = [""] * len(payloads)
        refs = refs or [""] * len(payloads)
        if len(refs) != len(payloads):
            raise InvalidError(f"{len(refs)} payload references for {len(payloads)} payloads")
        for ref in set(refs) - {""}:
            check_ref(ref)
            if not await self.blob_exists(workspace, ref):  # another workspace's does not count
                raise InvalidError(f"blob {ref} is not stored in workspace {workspace!r}: "
                                   "upload it first (PUT /v1/blobs/{ref})")
        for i, payload in enumerate(payloads):
            if len(payload) > INLINE_PAYLOAD_LIMIT:  # too big for a NATS message: a blob
                refs[i] = await self.store_blob(workspace, payload)
                payloads[i] = b""
        pid, lineage = (parent.call_id, parent.lineage) if parent else ("", [])
        calls = [call_store.build(workspace, dep.app, fn, dep.deployment_id, payload,
                                  payload_format, now, call_id=call_id, payload_ref=ref,
                                  parent_call_id=pid, lineage=lineage, submission=sub,
                                  transient=transient and parent is None)
                 for payload, ref, sub in zip(payloads, refs, subs, strict=True)]
        futs = [self.outputs.register(rec.call_id, rec.attempt_token) if register else None
                for rec, _ in calls]
        if parent is None:
            dups = await call_store.create_many(self.js, self.nc, self.buckets, fn_key, calls,
                                                self.signals, records=records,
                                                resubmitted=bool(submission))
            if duplicates is not None:
                duplicates |= dups
        else:
            # The children's entry first: a cancel of the parent that comes while they are
            # being created still finds them.
            await self.calls_kv.put(children_key(pid, calls[0][0].call_id),
                                    " ".join(rec.call_id for rec, _ in calls).encode())
            await call_store.create_many(self.js, self.nc, self.buckets, fn_key, calls,
                                         self.signals, records=True)
        return [(rec, fut) for (rec, _), fut in zip(calls, futs, strict=True)]

    async def _idempotent_call(self, workspace: str, app: str, fn: str, key: str,
                               req_hash: str) -> tuple[str, bool]:
        """(call id, whether it already existed) for an ``Idempotency-Key``; a key used
        before with another request (``req_hash``) is refused with a 422 naming it."""
        if not 1 <= len(key) <= 255:
            raise InvalidError(f"Idempotency-Key of {len(key)} characters: use 1 to 255")
        digest = hashlib.sha256(f"{workspace}\0{app}\0{fn}\0{key}".encode()).hexdigest()
        call_id = new_call_id(time.time())
        try:
            await self.idempotency_kv.create(digest, f"{call_id} {req_hash}".encode())
            return call_id, False
        except nats.js.errors.KeyWrongLastSequenceError:
            raw, _ = await bus.kv_get(self.idempotency_kv, digest)
            if raw is None:  # expired since
                return call_id, True
            found, _, found_hash = raw.decode().partition(" ")
            if found_hash and found_hash != req_hash:  # (one without a hash predates hashes)
                raise IdempotencyKeyReusedError(
                    f"Idempotency-Key {key!r} was already used for a different request to "
                    f"{app}/{fn} (call {found}): a key stands for one request, so resend it "
                    "with the same body, or use a new key for a new request") from None
            return found, True

    async def call_once(self, workspace: str, dep: DeploymentRecord, fn: str, payload: bytes,
                        fmt: str, ref: str, wait: float, key: str | None = None,
                        parent: Parent | None = None,
                        submission: str = "", transient: bool = True,
                        ) -> tuple[CallResponse, bool]:
        """One call (or, with an idempotency ``key`` used before, the call it made): its
        answer within ``wait`` seconds, and whether it was replayed. A waited call
        without a key or a parent is transient, unless ``transient`` is False (a call
        from a container, made outside any call)."""
        app = dep.app
        wait = min(wait, self.max_sync_wait)
        call_id = None
        if key is not None:
            call_id, existed = await self._idempotent_call(workspace, app, fn, key,
                                                           request_hash(fn, payload, fmt, ref))
            rec = await self.record(call_id, workspace) if existed else None
            if rec is not None:
                return await self.inline_result(workspace, await self.result_of(rec, wait)), True
        # A call waited on, without a key, gets its record only if the caller is answered
        # without the result (it then polls by id): a warm call stores its input and its
        # output, and no record nobody reads (8% of a warm call's latency, measured). Until
        # then the caller holds the only reference to the call; a retry writes the record
        # from the input (burst_agent.attempts), and :meth:`record` finds an answered call
        # by its output.
        lazy = key is None and wait > 0 and parent is None
        resubmitted: set[str] = set()
        try:
            [(rec, fut)] = await self.submit(workspace, dep, fn, [payload], register=True,
                                             payload_format=fmt, call_id=call_id, refs=[ref],
                                             records=not lazy, parent=parent,
                                             submission="" if key is not None else submission,
                                             duplicates=resubmitted,
                                             transient=lazy and transient)
        except nats.js.errors.KeyWrongLastSequenceError:
            # A racing resubmission with the same key created the call first.
            found = await self.record(call_id or "", workspace)
            if found is None:
                raise
            return await self.inline_result(workspace, await self.result_of(found, wait)), True
        if resubmitted:
            # The same submission came before (through another gateway): the call may be
            # answered, or retried, already; answer as a poll of it would.
            found = await self.record(rec.call_id, workspace)
            if found is not None:
                self.outputs.unregister(rec.call_id, fut)
                return await self.inline_result(workspace, await self.result_of(found, wait)), \
                    True
        structlog.contextvars.bind_contextvars(call_id=rec.call_id)
        answered = False
        try:
            resp = await self.wait_one(rec.call_id, fut, wait)
            answered = resp.status != "pending"
        finally:
            structlog.contextvars.unbind_contextvars("call_id")
            if lazy and not answered:
                await call_store.create_record(self.buckets.of(rec.call_id), rec,
                                                bool(submission) and key is None)
        return await self.inline_result(workspace, resp), False

    # ---- waiting -------------------------------------------------------------------
    async def wait_one(self, call_id: str, fut: asyncio.Future[Output],
                       wait: float) -> CallResponse:
        """The output the registered ``fut`` gets within ``wait`` s (else "pending")."""
        # The registered future itself, with a timer that answers None: its result wakes
        # this task at once (``wait_for(shield(...))`` passes it on through two more
        # callbacks, each a turn of the event loop on every call's way back).
        out: Output | None = None
        timer = asyncio.get_running_loop().call_later(wait, _give_up, fut) if wait > 0 else None
        try:
            out = await fut if wait > 0 else None
        finally:
            if timer is not None:
                timer.cancel()
            self.outputs.unregister(call_id, fut)
        if out is None:
            return CallResponse(call_id=call_id, status="pending")
        return from_output(out)

    async def result_of(self, rec: CallRecord, wait: float) -> CallResponse:
        """The call's current attempt's output, waiting up to ``wait`` seconds for it."""
        fut = self.outputs.register(rec.call_id, rec.attempt_token)
        out = await self.outputs.fetch(rec.call_id, rec.attempt)
        if out is not None and out.attempt_token == rec.attempt_token:
            self.outputs.unregister(rec.call_id, fut)
            return from_output(out)
        resp = await self.wait_one(rec.call_id, fut, wait)
        if resp.status == "pending":
            await self.keep_record(rec.call_id)
        return resp

    async def keep_record(self, call_id: str) -> None:
        """Write a transient call's record again (the same value, by compare-and-set): its
        caller still polls for it, so it must outlive the transient retention while the
        call runs (a .remote() of a call longer than 10 minutes). Other calls' records
        are kept as long as results anyway."""
        if not names.is_transient_call(call_id):
            return
        kv = self.buckets.transient
        raw, rev = await bus.kv_get(kv, call_id)
        if raw is None:
            return
        # (a write that lost a race to a retry's was a write too: the record is fresh)
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
            await kv.update(call_id, raw, last=rev)

    async def wait_many(self, workspace: str, refs: list[CallRef], wait: float,
                        linger: float = 0.0) -> list[CallResponse]:
        """The finished calls among ``refs``: at once if any is, else the first to finish.

        A ref's attempt token is the caller's proof it made the call; when it no longer
        matches (a retry moved the call on) the call's record, in the caller's workspace,
        says which attempt is current, and outputs of any other attempt are refused.
        Outputs of another workspace's calls are never answered, whatever the token.
        """
        outputs = self.outputs
        done: list[CallResponse] = []
        pending: list[CallRef] = []
        for ref in refs:
            out = outputs.recent(ref.call_id)
            if out is not None and out.workspace != workspace:
                continue  # another workspace's call: not even a token shown to it counts
            if out is not None and out.attempt_token != ref.attempt_token:
                rec = await self.record(ref.call_id, workspace)
                if rec is None:
                    continue
                ref.attempt_token = rec.attempt_token
            if out is not None and out.attempt_token == ref.attempt_token:
                done.append(from_output(out))
            else:
                pending.append(ref)
        if done or not pending or wait <= 0:
            return done
        group = outputs.register_group({r.call_id: r.attempt_token for r in pending})
        try:
            # Outputs this process cannot have seen (the call is older than the process),
            # did not keep (too big), or may have dropped from memory since (old calls,
            # checked a bounded number per request): look them up in the stream.
            now, deep = time.time(), 0
            for r in pending:
                created = call_created_at(r.call_id)
                old = now - created > STREAM_CHECK_AGE and deep < STREAM_CHECKS_PER_WAIT
                deep += old
                if created < self.started_at + 1.0 or old or outputs.seen_big(r.call_id):
                    rec = await self.record(r.call_id, workspace)
                    out = await outputs.fetch(r.call_id, rec.attempt) if rec else None
                    if (out is not None and rec is not None
                            and out.attempt_token == rec.attempt_token):
                        done.append(from_output(out))
            if done:
                return done
            # Until the first output, then up to ``linger`` more for others (or all of them).
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            lingering = False
            while len(group.outputs) < len(pending):
                if group.unsure:
                    await self._settle_unsure(group, workspace)
                    continue
                if group.outputs and not lingering:
                    if linger <= 0:
                        break
                    lingering, deadline = True, min(deadline, loop.time() + linger)
                left = deadline - loop.time()
                if left <= 0:
                    break
                group.event.clear()
                try:
                    await asyncio.wait_for(group.event.wait(), left)
                except TimeoutError:
                    break
            return [from_output(o) for o in group.outputs.values() if o.workspace == workspace]
        finally:
            outputs.unregister_group(group)

    async def wait_request(self, workspace: str, req: CallWaitRequest) -> list[CallResponse]:
        """:meth:`wait_many` for a wait request (``POST /v1/calls/wait``), its bounds
        checked: at most ``MAX_BATCH`` calls, ``wait`` up to ``max_sync_wait`` and
        ``linger`` up to 1 s."""
        if len(req.calls) > MAX_BATCH:
            raise InvalidError(f"a wait names at most {MAX_BATCH} calls, got {len(req.calls)}")
        for name, value in (("wait", req.wait), ("linger", req.linger)):
            if math.isnan(value):  # (would pass every bound below, and wait forever)
                raise InvalidError(f"{name}={value}: use a number of seconds")
        return await self.wait_many(workspace, req.calls,
                                    min(max(req.wait, 0.0), self.max_sync_wait),
                                    min(max(req.linger, 0.0), 1.0))

    async def _settle_unsure(self, group: Group, workspace: str) -> None:
        """Outputs of an attempt the waiter did not name: one counts if the call's record
        says its attempt is the current one (a retry moved the call on before the wait
        began, so the waiter named an older attempt); the others are stale."""
        unsure, group.unsure = group.unsure, {}
        for call_id, out in unsure.items():
            rec = await self.record(call_id, workspace)
            if rec is not None and rec.attempt_token == out.attempt_token:
                group.tokens[call_id] = out.attempt_token
                group.outputs[call_id] = out

    # ---- generators ----------------------------------------------------------------
    async def read_items(self, rec: CallRecord, cursor: int,
                         limit: int = 1000) -> tuple[list[OutputItem], int]:
        """Items of the call's current attempt stored after stream sequence ``cursor``."""
        subject = names.items_subject(rec.call_id, rec.attempt)
        items: list[OutputItem] = []
        while len(items) < limit:
            try:
                raw = await self.js.get_msg(names.STREAM_OUTPUTS, seq=cursor + 1,
                                            subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                break
            assert raw.seq is not None and raw.data is not None  # a message was found
            cursor = raw.seq
            item = OutputItemDecoder.decode(raw.data)
            if item.attempt_token == rec.attempt_token:
                items.append(item)
        return items, cursor

    async def items(self, workspace: str, call_id: str, cursor: int, wait: float,
                    ) -> tuple[list[OutputItem], int, CallResponse | None]:
        """A page of a generator call's items after ``cursor`` (waiting up to ``wait`` s
        for one), the next cursor, and the final answer once every item was listed."""
        rec = await self.record(call_id, workspace)
        if rec is None:
            raise NotFoundError(f"call {call_id!r} not found")
        deadline = time.monotonic() + min(wait, self.max_sync_wait)
        final: CallResponse | None = None
        while True:
            out = await self.outputs.fetch(call_id, rec.attempt)
            # The output is stored after the last item: read items after seeing it, so a
            # page with the final answer never leaves an item out.
            items, cursor = await self.read_items(rec, cursor)
            if out is not None and out.attempt_token == rec.attempt_token and not items:
                final = from_output(out)
            if items or final is not None or time.monotonic() >= deadline:
                return items, cursor, final
            await asyncio.sleep(0.05)
            rec = await self.record(call_id, workspace) or rec  # a retry moves the attempt on

    # ---- cancelling ----------------------------------------------------------------
    async def cancel(self, workspace: str, call_id: str) -> dict[str, Any]:
        """Cancel a call: it never starts if it has not, and is stopped if it runs.

        Answers ``{"cancelled": True}``, or False with the status when it had finished.
        """
        rec = await self.record(call_id, workspace)
        if rec is None:
            raise NotFoundError(f"call {call_id!r} not found")
        out = Output(call_id=rec.call_id, input_id=rec.input_id, attempt=rec.attempt,
                     attempt_token=rec.attempt_token, status="terminated",
                     error_type="burst.exception.InputCancellation",
                     error_message=f"call {rec.call_id} was cancelled", finished_at=time.time(),
                     workspace=rec.workspace)
        try:
            await bus.publish(self.js, names.output_subject(rec.call_id, rec.attempt),
                              encode(out), msg_id=f"{rec.input_id}:{rec.attempt}",
                              headers={"Nats-Expected-Last-Subject-Sequence": "0"})
        except nats.js.errors.APIError as e:
            if e.err_code != WRONG_LAST_SEQUENCE:
                raise
            done = await self.outputs.fetch(rec.call_id, rec.attempt)
            return {"call_id": call_id, "cancelled": False,
                    "status": done.status if done else "finished"}
        fn_key = names.function_key(rec.workspace, rec.app, rec.function)
        await self.nc.publish(names.call_cancelled_subject(fn_key),
                              encode(CallCancelled(call_id=call_id, fn_key=fn_key,
                                                   at=time.time())))
        # Its children (calls it made from its container) are cancelled with it, theirs
        # with them: nobody is left to wait for their results.
        for child in await self.children(call_id):
            with contextlib.suppress(NotFoundError):
                await self.cancel(workspace, child)
        return {"call_id": call_id, "cancelled": True}

    # ---- the call graph ------------------------------------------------------------
    async def children(self, call_id: str) -> list[str]:
        """The calls ``call_id`` made from inside its container, in the order made."""
        stream = "KV_" + names.KV_CALLS
        subject = bus.kv_subject(self.calls_kv, children_key(call_id, "*"))
        out: list[str] = []
        seq = 0
        while True:
            try:
                raw = await self.js.get_msg(stream, seq=seq + 1, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                return out
            assert raw.seq is not None
            seq = raw.seq
            out += (raw.data or b"").decode().split()

    async def graph(self, workspace: str, call_id: str) -> dict[str, Any]:
        """The tree of calls ``call_id`` belongs to, from its root call: each node a
        dict with ``call_id``, ``input_id``, ``app``, ``function_name``, ``status``
        (``pending`` until the call's output is stored) and ``children``. At most
        ``MAX_GRAPH_NODES`` nodes are listed."""
        rec = await self.record(call_id, workspace)
        if rec is None:
            raise NotFoundError(f"call {call_id!r} not found")
        for _ in range(MAX_GRAPH_DEPTH):  # up to the root
            up = await self.record(rec.parent_call_id, workspace) if rec.parent_call_id else None
            if up is None:
                break
            rec = up
        budget = [MAX_GRAPH_NODES]

        async def node(r: CallRecord) -> dict[str, Any]:
            budget[0] -= 1
            out = await self.outputs.fetch(r.call_id, r.attempt)
            status = out.status if out is not None and out.attempt_token == r.attempt_token \
                else "pending"
            kids: list[dict[str, Any]] = []
            for child in await self.children(r.call_id):
                if budget[0] <= 0:
                    break
                crec = await self.record(child, workspace)
                if crec is not None:
                    kids.append(await node(crec))
            return {"call_id": r.call_id, "input_id": r.input_id, "app": r.app,
                    "function_name": r.function, "status": status, "children": kids}

        return await node(rec)
