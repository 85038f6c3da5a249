"""Logging: structlog, readable on a terminal, JSON lines otherwise (journald, files, shippers).

Libraries (pymodbus, asyncua, pysnmp, aiomqtt, paho, amqtt) log through the standard library. Their records
go through the same structlog renderer as ours (one format, one stream), and through two bounds first,
because a hostile device makes a library log without end (pymodbus appends hex dumps of the last frames to
every error: a Modbus device streaming random bytes made 80 MB of log a minute):

- a rate limit per logger, level and message template (the message with its numbers and hex dumps
  blanked): `LIBRARY_BURST` records per `LIBRARY_WINDOW` seconds pass, the rest are dropped and counted
  (`dcim_log_suppressed_total{logger}`); the first record of the next window says how many were dropped
  (`suppressed=N`);
- a length limit: a message is cut at `MAX_MESSAGE` characters, with the number of characters cut.

So a library's log volume is bounded by templates x burst x length per window, whatever a device sends.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import structlog

from dcim.core.metrics import REGISTRY

# Loggers of the libraries the daemon uses (aiomqtt's is "mqtt"; paho logs only where a client enables it).
LIBRARIES = ("pymodbus", "asyncua", "pysnmp", "amqtt", "transitions", "mqtt", "paho", "aiomqtt")
LIBRARY_BURST = 5
LIBRARY_WINDOW = 60.0
MAX_MESSAGE = 400
# Distinct templates remembered; past that the oldest is forgotten (its next record passes again).
MAX_TEMPLATES = 512

SUPPRESSED = REGISTRY.counter("dcim_log_suppressed_total", "Library log records dropped by the rate limit",
                              ("logger",))

# Numbers, hex words and runs of hex byte pairs: what changes between two records of one template.
_VARIABLE = re.compile(r"0x[0-9a-fA-F]+|(?:\b[0-9a-fA-F]{2}\b[ :]?){2,}|\d+")


def template(message: str) -> str:
    """The part of a message that names what happened, for rate limiting: variables blanked, at most 80 chars."""
    return _VARIABLE.sub("#", message[:160])[:80]


def truncate(message: str, limit: int = MAX_MESSAGE) -> str:
    if len(message) <= limit:
        return message
    return f"{message[:limit]}... ({len(message) - limit} more chars)"


@dataclass(slots=True)
class _Window:
    start: float
    passed: int = 0
    dropped: int = 0


class RateLimit(logging.Filter):
    """Lets `burst` records per (logger, level, template) through per `window` seconds; counts the rest.

    `clock` is monotonic seconds; tests replace it to make windows deterministic."""

    def __init__(self, burst: int = LIBRARY_BURST, window: float = LIBRARY_WINDOW,
                 clock: Callable[[], float] = time.monotonic, max_templates: int = MAX_TEMPLATES) -> None:
        super().__init__()
        self.burst = burst
        self.window = window
        self.clock = clock
        self.max_templates = max_templates
        self._windows: dict[tuple[str, int, str], _Window] = {}
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, template(_message(record)))
        now = self.clock()
        windows = self._windows
        state = windows.get(key)
        if state is None or now - state.start >= self.window:
            if state is None and len(windows) >= self.max_templates:
                del windows[next(iter(windows))]
            if state is not None and state.dropped:
                record.dcim_suppressed = state.dropped
            windows[key] = state = _Window(now)
        if state.passed < self.burst:
            state.passed += 1
            return True
        state.dropped += 1
        self.dropped += 1
        SUPPRESSED.inc(logger=record.name)
        return False


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # a library's own bad format string: its template is still worth a line
        return str(record.msg)


class LibraryHandler(logging.Handler):
    """Standard-library records into structlog: one renderer and stream for everything, bounded (see above)."""

    def __init__(self, limit: RateLimit) -> None:
        super().__init__()
        self.limit = limit
        self.addFilter(limit)
        self._log = structlog.get_logger("library")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"logger": record.name}
            suppressed = getattr(record, "dcim_suppressed", 0)
            if suppressed:
                fields["suppressed"] = suppressed
            if record.exc_info and record.exc_info[1] is not None:
                error = record.exc_info[1]
                fields["error"] = truncate(f"{type(error).__name__}: {error}")
            self._log.log(record.levelno, truncate(_message(record)), **fields)
        except Exception:
            self.handleError(record)


def setup_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> RateLimit:
    """Configure structlog and route the standard library's records through it; returns the rate limit."""
    out = stream if stream is not None else sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
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
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, LibraryHandler):
            root.removeHandler(handler)
    limit = RateLimit()
    root.addHandler(LibraryHandler(limit))
    root.setLevel(logging.WARNING if numeric > logging.DEBUG else logging.DEBUG)
    # Libraries' own warnings mostly repeat what the drivers report as errors; keep them at error unless
    # debugging. aiomqtt's "mqtt" logger warns of pending publishes, which the publisher keeps in flight.
    for noisy in LIBRARIES:
        logging.getLogger(noisy).setLevel(logging.ERROR if numeric > logging.DEBUG else logging.INFO)
    return limit
