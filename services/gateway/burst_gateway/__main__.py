import asyncio

import uvicorn

from burst_core import logs
from burst_core.settings import load
from burst_gateway.app import asgi_app
from burst_gateway.http import GatewayHttp
from burst_gateway.settings import GatewaySettings
from burst_gateway.web import WebProxy


def main() -> None:
    settings = load(GatewaySettings)
    logs.configure("gateway", settings.log_level, settings.instance)
    api = asgi_app(settings)
    config = uvicorn.Config(api, host=settings.host, port=settings.port, log_level="warning",
                            access_log=False, proxy_headers=False, timeout_graceful_shutdown=5,
                            http=GatewayHttp)
    servers = [uvicorn.Server(config)]
    if settings.web_port:
        # The web endpoints: a site of their own, on their own port (see web.py).
        servers.append(uvicorn.Server(uvicorn.Config(
            WebProxy(api.app, settings), host=settings.host, port=settings.web_port,
            log_level="warning", access_log=False, proxy_headers=False,
            timeout_graceful_shutdown=5, lifespan="off")))

    async def serve() -> None:
        # Each server captures SIGTERM/SIGINT and, once it stops, passes the signal on to
        # the handler it replaced: one signal stops both. Either one stopping stops both.
        tasks = [asyncio.create_task(s.serve()) for s in servers]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for s in servers:
            s.should_exit = True
        await asyncio.gather(*tasks)

    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(serve())


if __name__ == "__main__":
    main()
