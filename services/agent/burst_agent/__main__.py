from burst_agent.service import run
from burst_agent.settings import AgentSettings
from burst_core import logs
from burst_core.service import run_service
from burst_core.settings import load


def main() -> None:
    settings = load(AgentSettings)
    logs.configure("agent", settings.log_level, settings.instance)
    run_service(lambda stop: run(settings, stop))


if __name__ == "__main__":
    main()
