"""Logging: structlog, readable on a terminal, JSON lines otherwise (journald, files, shippers)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def setup_logging(level: str = "info", fmt: str = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    numeric = getattr(logging, level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any
    if use_json:
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library: keep their noise at warning unless debugging.
    logging.basicConfig(level=logging.WARNING if numeric > logging.DEBUG else logging.DEBUG, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    # aiomqtt's "mqtt" logger warns of pending publishes, which the publisher keeps in flight by design.
    for noisy in ("pymodbus", "asyncua", "pysnmp", "amqtt", "transitions", "mqtt"):
        logging.getLogger(noisy).setLevel(logging.ERROR if numeric > logging.DEBUG else logging.INFO)
