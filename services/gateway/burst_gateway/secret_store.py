"""The gateway's side of user secrets: the only place values are sealed and opened.

Stored secrets live in KV (``burst_secrets``, one entry per workspace and name) as
envelopes (``burst_core.secrets``); secrets made in code are sealed here at deploy, so
the deployment record, its events and placements carry envelopes only. An agent asks for
a container's values over core NATS (:meth:`SecretStore.serve`): the gateway checks that
the container is placed on that agent for that function (the scheduler's claim in
``burst_agents``), opens the values of that moment (so an update reaches containers
started after it) and seals the answer to the agent's one-use key.

Invariant: no value is ever logged, raised in an error, or answered over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import msgspec
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from burst import secret as sdk_secret
from burst.exception import ConflictError, InvalidError, NotFoundError
from burst.wire import FunctionSpec, SecretSpec
from burst_core import bus, logs, names, sealing
from burst_core.schemas import (
    AgentRecordDecoder,
    DeploymentRecordDecoder,
    SecretRecord,
    SecretRecordDecoder,
    SecretsFetchDecoder,
    SecretsFetched,
    WebhookEndpointDecoder,
    encode,
)
from burst_core.secrets import KeyRing, KeyRingError, seal_reply, write_webhook_keys

log = logs.get("burst.gateway.secrets")


def public(rec: SecretRecord) -> dict[str, Any]:
    """What the API answers about a secret: never its values."""
    return {"name": rec.name, "keys": rec.keys, "created_at": rec.created_at,
            "updated_at": rec.updated_at, "version": rec.version}


class SecretStore:
    def __init__(self, nc: NATS, js: JetStreamContext, kv: KeyValue, ring: KeyRing,
                 webhook_keys_file: Path | None = None) -> None:
        #: Where billing's derived webhook keys are written (None: nowhere).
        self.webhook_keys_file = webhook_keys_file
        self.nc, self.js, self.kv, self.ring = nc, js, kv, ring
        self._sub: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- stored secrets ------------------------------------------------------------
    async def get(self, workspace: str, name: str) -> tuple[SecretRecord, int]:
        sdk_secret.check_name(name)  # a 400 naming it, before it reaches a KV key
        raw, rev = await bus.kv_get(self.kv, names.secret_key(workspace, name))
        if raw is None:
            raise NotFoundError(f"secret {name!r} not found in workspace {workspace!r}: "
                                "make it with `burst secret create`")
        return SecretRecordDecoder.decode(raw), rev

    async def list_of(self, workspace: str) -> list[SecretRecord]:
        rows = [SecretRecordDecoder.decode(v)
                for v in (await bus.kv_values(self.kv, workspace)).values()]
        return sorted(rows, key=lambda r: r.name)

    async def put(self, workspace: str, name: str, values: dict[str, str],
                  force: bool) -> SecretRecord:
        sdk_secret.check_name(name)
        sdk_secret.check_values(values, f"secret {name!r}")
        if not values:
            raise InvalidError(f"secret {name!r} has no keys: give at least one KEY=VALUE")
        key = names.secret_key(workspace, name)
        now = time.time()
        raw, rev = await bus.kv_get(self.kv, key)
        old = SecretRecordDecoder.decode(raw) if raw is not None else None
        if old is not None and not force:
            raise ConflictError(f"secret {name!r} already exists in workspace {workspace!r}: "
                                "pass --force (force=true) to replace its values")
        rec = SecretRecord(workspace=workspace, name=name, keys=sorted(values),
                           sealed=self.ring.seal_values(workspace, values),
                           created_at=old.created_at if old else now, updated_at=now,
                           version=old.version + 1 if old else 1)
        try:
            if old is None:
                await self.kv.create(key, encode(rec))
            else:
                await self.kv.update(key, encode(rec), last=rev)
        except nats.js.errors.KeyWrongLastSequenceError:  # a concurrent writer won
            raise ConflictError(f"secret {name!r} was changed at the same time: try again"
                                ) from None
        return rec

    async def delete(self, workspace: str, name: str) -> None:
        await self.get(workspace, name)
        await self.kv.purge(names.secret_key(workspace, name))

    # ---- deployments ---------------------------------------------------------------
    async def prepare(self, workspace: str, functions: list[FunctionSpec]) -> None:
        """Check a deployment's secrets and seal those made in code, in place: a stored one
        must exist with every ``required_keys`` entry; the request's plain values are
        replaced by an envelope before anything is stored."""
        for fn in functions:
            for s in fn.secrets:
                where = f"function {fn.name!r}"
                if s.sealed and not s.values and not s.name:
                    # already sealed (a redeploy of a stored spec): it must open here
                    try:
                        self.ring.open_values(workspace, s.sealed)
                    except KeyRingError as e:
                        raise InvalidError(f"{where}: a sealed secret does not open: {e}"
                                           ) from None
                    continue
                if s.name:
                    if s.values or s.sealed:
                        raise InvalidError(f"{where}: secret {s.name!r} names a stored "
                                           "secret and gives values: give one or the other")
                    sdk_secret.check_name(s.name)
                    rec, _ = await self.get(workspace, s.name)
                    missing = [k for k in s.required_keys if k not in rec.keys]
                    if missing:
                        raise InvalidError(
                            f"{where}: secret {s.name!r} is missing required key(s) "
                            f"{', '.join(missing)} (it has {', '.join(rec.keys) or 'none'})")
                    continue
                sdk_secret.check_values(s.values, f"{where}: a secret made in code")
                s.sealed = self.ring.seal_values(workspace, s.values)
                s.values = {}
                s.required_keys = []

    async def values_for(self, workspace: str, specs: list[SecretSpec]) -> dict[str, str]:
        """The environment ``specs`` give, in order (a later key overrides an earlier)."""
        env: dict[str, str] = {}
        for s in specs:
            if s.name:
                rec, _ = await self.get(workspace, s.name)
                env.update(self.ring.open_values(workspace, rec.sealed))
            elif s.sealed:
                env.update(self.ring.open_values(workspace, s.sealed))
        return env

    # ---- the agents' requests ------------------------------------------------------
    async def serve(self) -> None:
        self._sub = await self.nc.subscribe(names.SUBJECT_SECRETS_FETCH,
                                            queue=names.QUEUE_SECRETS_FETCH, cb=self._on_fetch)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        for t in list(self._tasks):
            t.cancel()

    async def _on_fetch(self, msg: Msg) -> None:
        try:
            answer = await self._answer(msg.data)
        except Exception as e:  # never the request's content: it names no values anyway
            log.warning("secrets_fetch_failed", error=type(e).__name__)
            answer = SecretsFetched(error="the gateway could not answer (see its log)")
        with contextlib.suppress(Exception):
            await msg.respond(encode(answer))

    async def _answer(self, data: bytes) -> SecretsFetched:
        try:
            req = SecretsFetchDecoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return SecretsFetched(error="malformed secrets request")
        agents = await self.js.key_value(names.KV_AGENTS)
        raw, _ = await bus.kv_get(agents, req.agent_id)
        fn_key = names.function_key(req.workspace, req.app, req.function)
        alloc = AgentRecordDecoder.decode(raw).allocations.get(req.container_id) if raw else None
        if alloc is None or alloc.fn_key != fn_key:
            log.warning("secrets_fetch_refused", agent_id=req.agent_id,
                        container_id=req.container_id, fn_key=fn_key)
            return SecretsFetched(error=f"container {req.container_id} is not placed on agent "
                                        f"{req.agent_id} for {fn_key}")
        try:
            env = await self.values_for(req.workspace, req.secrets)
        except (NotFoundError, KeyRingError) as e:
            return SecretsFetched(error=str(e))
        server_key, sealed = seal_reply(req.reply_key, env)
        return SecretsFetched(server_key=server_key, sealed=sealed)

    # ---- keys ----------------------------------------------------------------------
    async def reseal_webhook_secrets(self) -> int:
        """Webhook signing secrets sealed otherwise than under the newest derived key
        (``sealed:v1`` under the master key itself, or an older key) are sealed again;
        how many. Compare-and-set: a concurrent change wins."""
        box = sealing.Sealer(self.ring)
        try:
            kv = await self.js.key_value(names.KV_WEBHOOKS)
        except nats.js.errors.BucketNotFoundError:  # no webhook made yet
            return 0
        n = 0
        for key in await bus.kv_keys(kv):
            raw, rev = await bus.kv_get(kv, key)
            if raw is None:
                continue
            ep = WebhookEndpointDecoder.decode(raw)
            if not box.needs_reseal(ep.secret):
                continue
            try:
                ep.secret = box.reseal(ep.secret)
            except sealing.SealingError as e:
                log.warning("webhook_secret_not_resealed", key=key, error=str(e))
                continue
            with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                await kv.update(key, encode(ep), last=rev)  # (a concurrent change wins)
                n += 1
        return n

    async def rotate(self, deployments: KeyValue) -> dict[str, Any]:
        """Re-wrap every data key under the newest master key: stored secrets, secrets
        made in code (in deployment records), and reseal webhook signing secrets. Values
        are never decrypted for this (only data keys are unwrapped and wrapped again)."""
        self.ring.reload()
        if self.webhook_keys_file is not None:  # before resealing: billing opens them
            write_webhook_keys(self.ring, self.webhook_keys_file)
        stored = 0
        for key in await bus.kv_keys(self.kv):
            for _ in range(5):  # compare-and-set against a concurrent update
                raw, rev = await bus.kv_get(self.kv, key)
                if raw is None:
                    break
                rec = SecretRecordDecoder.decode(raw)
                if not self.ring.needs_rewrap(rec.sealed):
                    break
                rec.sealed = self.ring.rewrap(rec.sealed)
                try:
                    await self.kv.update(key, encode(rec), last=rev)
                    stored += 1
                    break
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue

        inline = 0
        for key in await bus.kv_keys(deployments):
            raw, rev = await bus.kv_get(deployments, key)
            if raw is None:
                continue
            dep = DeploymentRecordDecoder.decode(raw)
            changed = 0
            for fn in dep.functions:
                for s in fn.secrets:
                    if s.sealed and self.ring.needs_rewrap(s.sealed):
                        s.sealed = self.ring.rewrap(s.sealed)
                        changed += 1
            if changed:
                # redeployed meanwhile: that deployment was sealed under the newest key
                with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                    await deployments.update(key, encode(dep), last=rev)
                    inline += changed
        webhooks = await self.reseal_webhook_secrets()
        return {"key_id": self.ring.newest.kid, "keys_in_ring": len(self.ring.keys),
                "secrets_rewrapped": stored, "code_secrets_rewrapped": inline,
                "webhook_secrets_resealed": webhooks}
