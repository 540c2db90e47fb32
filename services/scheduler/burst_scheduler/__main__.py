from burst_core import logs
from burst_core.service import run_service
from burst_core.settings import load
from burst_scheduler.service import run
from burst_scheduler.settings import SchedulerSettings


def main() -> None:
    settings = load(SchedulerSettings)
    logs.configure("scheduler", settings.log_level, settings.instance)
    run_service(lambda stop: run(settings, stop))


if __name__ == "__main__":
    main()
