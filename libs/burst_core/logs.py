"""structlog configuration: JSON lines with the service name, call id bound where known."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def configure(service: str, level: str = "info", instance: str = "") -> None:
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        lvl = logging.INFO
    logging.basicConfig(stream=sys.stderr, level=lvl, format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(
        service=service, **({"instance": instance} if instance else {}))


def get(name: str | None = None, **bound: Any) -> Any:
    log = structlog.get_logger(name)
    return log.bind(**bound) if bound else log
