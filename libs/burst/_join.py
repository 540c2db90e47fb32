"""``burst agent join``: check a join bundle against the cluster, then run an agent.

Everything is checked before the agent starts, and nothing is written to the cluster
until then (a refused join leaves nothing behind): the bundle's signature and expiry
(:func:`burst._natsconf.open_bundle`), that the NATS servers it names present a
certificate of the bundle's CA (else the bundle is for another cluster), that they take
its credentials, that this machine's clock agrees with the server's, and that no live
agent has the name already.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from burst import _natsconf
from burst.exception import ConflictError, InvalidError, UnavailableError

#: Seconds the preflight waits for each answer.
CHECK_TIMEOUT = 5.0


def _server_time(info: dict[str, Any]) -> float | None:
    raw = info.get("ts")
    if not isinstance(raw, str):
        return None
    try:  # RFC 3339 with nanoseconds: keep microseconds
        main, _, frac = raw.rstrip("Z").partition(".")
        stamp = datetime.datetime.fromisoformat(main).replace(tzinfo=datetime.UTC)
        return stamp.timestamp() + (float("0." + frac[:6]) if frac else 0.0)
    except ValueError:
        return None


async def preflight(bundle: dict[str, Any], ca_file: str, name: str,
                    max_skew: float, fresh: float) -> None:
    """Raise the reason this agent may not join; return when it may."""
    import nats
    import nats.errors

    from burst_core import names

    logging.getLogger("asyncio").setLevel(logging.ERROR)  # TLS close chatter
    urls = _natsconf.user_url(",".join(bundle["nats_urls"]), bundle["user"], bundle["password"])
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    errors: list[str] = []

    async def _err(e: Exception) -> None:
        errors.append(str(e))

    where = ", ".join(bundle["nats_urls"])
    try:
        nc = await nats.connect(servers=urls.split(","), tls=ctx, allow_reconnect=False,
                                connect_timeout=CHECK_TIMEOUT, max_reconnect_attempts=0,
                                error_cb=_err, name=f"agent-join-{name}")
    except ssl.SSLCertVerificationError:
        raise InvalidError(
            f"the NATS server at {where} is not part of cluster {bundle['cluster_id']}: its "
            "certificate is not signed by the bundle's CA (a bundle of another cluster?)"
        ) from None
    except Exception as e:
        text = " ".join([str(e), *errors]).lower()
        if "authorization" in text or "authentication" in text:
            raise InvalidError(
                f"the NATS server at {where} refused this bundle's credentials (user "
                f"{bundle['user']}): they were revoked or altered; ask for a new bundle"
            ) from None
        if "certificate" in text or "ssl" in text:
            raise InvalidError(
                f"the NATS server at {where} is not part of cluster {bundle['cluster_id']}: "
                f"TLS failed ({' '.join(errors) or e})") from None
        raise UnavailableError(f"cannot reach the cluster's NATS at {where}: "
                               f"{' '.join(errors) or repr(e)}") from None
    try:
        before = time.time()
        reply = await nc.request(f"$JS.API.STREAM.INFO.KV_{names.KV_HEARTBEATS}", b"",
                                 timeout=CHECK_TIMEOUT)
        after = time.time()
        info = json.loads(reply.data)
        server = _server_time(info)
        if server is not None:
            skew = (before + after) / 2 - server
            if abs(skew) > max_skew:
                raise InvalidError(
                    f"this machine's clock is {abs(skew):.0f} s "
                    f"{'ahead of' if skew > 0 else 'behind'} the cluster's (at most "
                    f"BURST_CLOCK_SKEW_MAX={max_skew:g} s): set it right (NTP) and join again")
        js = nc.jetstream()
        agents = await js.key_value(names.KV_AGENTS)
        beats = await js.key_value(names.KV_HEARTBEATS)
        try:
            await agents.get(name)
        except Exception:
            return  # no such agent: the name is free
        try:
            beat = await beats.get(name)
        except Exception:
            beat = None
        if beat is not None and beat.value:
            from burst_core.schemas import AgentHeartbeatDecoder
            at = AgentHeartbeatDecoder.decode(beat.value).at
            age = time.time() - at
            if age < fresh:
                raise ConflictError(
                    f"an agent named {name!r} is already in the cluster (heartbeat {age:.1f} s "
                    "ago): give this one another --name, or drain that one first")
    finally:
        await nc.close()


def run_agent(bundle_path: Path, name: str, gpus: str, spot: bool, runtime: str,
              home: Path, default_name: str = "") -> None:
    """Check the bundle and the cluster, then become the agent (never returns). ``name``
    (else the bundle's agent, else ``default_name``) names it; a bundle made for one agent
    (``burst agent token --name``) joins only as that agent."""
    from burst_core import names

    if runtime not in ("process", "docker"):
        raise InvalidError(f"invalid --runtime {runtime!r}: use process or docker")
    bundle = _natsconf.open_bundle(bundle_path)
    bound = str(bundle.get("agent") or "")
    if bound and name and name != bound:
        raise InvalidError(f"join bundle {bundle_path} is for agent {bound!r} only (burst "
                           f"agent token --name {bound}): join with --name {bound}, or make "
                           f"another bundle for {name!r}")
    name = name or bound or default_name
    try:
        names.check_ident("agent", name)
    except ValueError as e:
        raise InvalidError(f"invalid --name {name!r}: {e}") from None
    max_skew = float(os.environ.get("BURST_CLOCK_SKEW_MAX", "30"))
    fresh = float(os.environ.get("BURST_AGENT_FRESH", "10"))
    home.mkdir(parents=True, exist_ok=True)
    ca_file = home / "cluster-ca.pem"
    with tempfile.NamedTemporaryFile("w", dir=home, delete=False, suffix=".pem") as f:
        f.write(bundle["ca_pem"])
    os.replace(f.name, ca_file)
    asyncio.run(preflight(bundle, str(ca_file), name, max_skew, fresh))
    env = {k: v for k, v in os.environ.items()
           if k not in ("BURST_URL", "BURST_TOKEN", "BURST_WORKSPACE", "BURST_INSTANCE")}
    env.update(
        BURST_NATS_URL=_natsconf.user_url(",".join(bundle["nats_urls"]), bundle["user"],
                                          bundle["password"]),
        BURST_NATS_CA=str(ca_file),
        BURST_AGENT_ID=name,
        BURST_GPUS=gpus,
        BURST_SPOT="1" if spot else "0",
        BURST_RUNTIME=runtime,
        BURST_HOME=str(home),
        BURST_ENSURE_TOPOLOGY="0",
        PYTHONUNBUFFERED="1",
    )
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", "burst_agent"], env)
