import sys

from burst_billing import prices
from burst_billing.service import run
from burst_billing.settings import BillingSettings
from burst_core import logs
from burst_core.service import run_service
from burst_core.settings import load


def main() -> None:
    settings = load(BillingSettings)
    logs.configure("billing", settings.log_level, settings.instance)
    try:
        prices.load(settings.prices)
    except prices.PriceTableError as e:
        print(f"burst billing: {e}", file=sys.stderr)
        sys.exit(2)
    run_service(lambda stop: run(settings, stop))


if __name__ == "__main__":
    main()
