"""A placed container's secret values, asked of the gateway when the container starts.

The agent holds no key and never reads the secrets' store: it sends the container's
placement (which secrets, in order) and a one-use public key over a core-NATS request (no
stream keeps it); a gateway checks the placement and answers the values sealed to that
key. They go into the container's environment only: never into a log, an event or an
error (an error names the secret, not a value).
"""

from __future__ import annotations

import nats.errors
from nats.aio.client import Client as NATS

from burst_core import names
from burst_core.schemas import Placement, SecretsFetch, SecretsFetchedDecoder, encode
from burst_core.secrets import KeyRingError, open_reply, reply_keypair


class SecretsUnavailable(Exception):
    """The container cannot start: the gateway says why (an unknown secret, a key not in
    the ring): the callers waiting for it are answered with the reason, no values."""


class SecretsNotAnswered(Exception):
    """No gateway answered (one restarting): a failed start like any other, tried again
    after the function's start backoff; the waiting calls keep waiting."""


async def fetch_env(nc: NATS, agent_id: str, placement: Placement,
                    timeout: float) -> dict[str, str]:
    """The environment the placement's secrets give (later ones override earlier keys)."""
    if not placement.function.secrets:
        return {}
    priv, pub = reply_keypair()
    req = SecretsFetch(container_id=placement.container_id, agent_id=agent_id,
                       workspace=placement.workspace, app=placement.app,
                       function=placement.function.name,
                       secrets=placement.function.secrets, reply_key=pub)
    try:
        msg = await nc.request(names.SUBJECT_SECRETS_FETCH, encode(req), timeout=timeout)
    except nats.errors.NoRespondersError:
        raise SecretsNotAnswered("secrets: no gateway is running to answer for them") from None
    except nats.errors.TimeoutError:
        raise SecretsNotAnswered(f"secrets: no gateway answered within {timeout} s "
                                 "(BURST_SECRETS_FETCH_TIMEOUT)") from None
    answer = SecretsFetchedDecoder.decode(msg.data)
    if answer.error:
        raise SecretsUnavailable(f"secrets: {answer.error}")
    try:
        return open_reply(priv, answer.server_key, answer.sealed)
    except KeyRingError as e:
        raise SecretsUnavailable(f"secrets: {e}") from None
