from burst_billing.service import run
from burst_billing.settings import BillingSettings
from burst_core import logs
from burst_core.service import run_service
from burst_core.settings import load


def main() -> None:
    settings = load(BillingSettings)
    logs.configure("billing", settings.log_level, settings.instance)
    run_service(lambda stop: run(settings, stop))


if __name__ == "__main__":
    main()
