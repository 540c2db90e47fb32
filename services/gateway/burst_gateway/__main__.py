import uvicorn

from burst_core import logs
from burst_core.settings import load
from burst_gateway.app import asgi_app
from burst_gateway.http import GatewayHttp
from burst_gateway.settings import GatewaySettings


def main() -> None:
    settings = load(GatewaySettings)
    logs.configure("gateway", settings.log_level, settings.instance)
    uvicorn.run(asgi_app(settings), host=settings.host, port=settings.port,
                log_level="warning", access_log=False, proxy_headers=False,
                timeout_graceful_shutdown=5, http=GatewayHttp)


if __name__ == "__main__":
    main()
