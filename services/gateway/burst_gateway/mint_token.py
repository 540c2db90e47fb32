"""Print a fresh operator token of this cluster: ``python -m burst_gateway.mint_token``.

Run where the gateway runs (``docker compose exec gateway python -m burst_gateway.mint_token``,
which ``burst profile compose`` does): it reaches NATS with the gateway's own settings
(``BURST_NATS_URL``) and stores only the token's sha256, as every token is stored. The
token is printed once, on stdout, and kept nowhere else.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from burst_core import bus, names
from burst_core.settings import load
from burst_gateway.auth import TokenStore, Workspaces
from burst_gateway.settings import GatewaySettings


async def mint(nats_url: str, workspace: str, name: str) -> str:
    nc = await bus.connect(nats_url, "gateway-mint-token")
    try:
        js = nc.jetstream()  # the bucket is there once the gateway started
        await Workspaces(await js.key_value(names.KV_WORKSPACES)).create(
            workspace, created_by="mint_token", exist_ok=True)
        store = TokenStore(await js.key_value(names.KV_TOKENS), cache_ttl=0.0)
        token, _ = await store.create(workspace, scope="operator", name=name,
                                      created_by="mint_token")
        return token
    finally:
        await nc.drain()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m burst_gateway.mint_token",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", default="default")
    parser.add_argument("--name", default="admin")
    args = parser.parse_args(argv)
    settings = load(GatewaySettings)
    try:
        token = asyncio.run(asyncio.wait_for(
            mint(settings.nats_url, args.workspace, args.name), 30))
    except Exception as e:
        print(f"mint_token: no token made ({type(e).__name__}: {e}); is NATS at "
              f"{settings.nats_url} up?", file=sys.stderr)
        return 1
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
