"""The machine's floor for one call: HTTP -> one FastAPI route -> one NATS request -> echo.

Run as ``python bench/_floor.py responder NATS_URL`` (the echo responder) or
``python bench/_floor.py server NATS_URL PORT`` (one uvicorn worker).
"""

# No ``from __future__ import annotations`` here: FastAPI must see the route's real
# ``Request`` annotation (imported inside server()), or it takes ``request`` for a query
# parameter and answers every call with 422 without making the NATS request.
import asyncio
import sys


async def responder(url: str) -> None:
    import nats

    nc = await nats.connect(url)

    async def echo(msg) -> None:  # type: ignore[no-untyped-def]
        await msg.respond(msg.data)

    await nc.subscribe("bench.echo", cb=echo)
    print("ready", flush=True)
    await asyncio.Event().wait()


def server(url: str, port: int) -> None:
    from contextlib import asynccontextmanager

    import nats
    import uvicorn
    from fastapi import FastAPI, Request, Response

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        app.state.nc = await nats.connect(url)
        yield
        await app.state.nc.close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/echo")
    async def echo(request: Request) -> Response:
        reply = await request.app.state.nc.request("bench.echo", await request.body(), timeout=5)
        return Response(reply.data, media_type="application/octet-stream")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    if sys.argv[1] == "responder":
        asyncio.run(responder(sys.argv[2]))
    else:
        server(sys.argv[2], int(sys.argv[3]))
