"""systemd's notify protocol (sd_notify(3)) without a dependency: READY, STATUS, STOPPING and WATCHDOG.

    notifier = Notifier.from_env()           # None when not started by systemd with Type=notify
    if notifier:
        notifier.ready("12 devices, 11 online")
        interval = watchdog_interval(config.systemd.watchdog_interval)
        if interval:
            tg.create_task(notifier.watchdog_loop(interval, alive=poller_made_progress), name="watchdog")

Messages are datagrams of `KEY=value` lines sent to $NOTIFY_SOCKET (a path, or an abstract name written
with a leading '@'). The socket is non-blocking: a full socket buffer drops the message and counts it,
because stalling the event loop for a heartbeat would defeat the heartbeat.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping

import structlog

from dcim.core.metrics import REGISTRY

log = structlog.get_logger(__name__)

SENT = REGISTRY.counter("dcim_sdnotify_sent_total", "sd_notify messages sent")
DROPPED = REGISTRY.counter("dcim_sdnotify_dropped_total", "sd_notify messages dropped (socket full or gone)")

def _address(value: str) -> str | bytes:
    if value.startswith("@"):
        # Abstract namespace: the name starts with a NUL byte on the wire.
        return b"\0" + value[1:].encode()
    return value


class Notifier:
    def __init__(self, address: str) -> None:
        if not address or not (address.startswith("/") or address.startswith("@")):
            raise ValueError(f"NOTIFY_SOCKET must be an absolute path or an @abstract name, not {address!r}")
        self.address = address
        self._target = _address(address)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)
        self.sent = 0
        self.dropped = 0
        self._warned = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier | None:
        """The notifier for $NOTIFY_SOCKET, or None when the variable is unset or empty."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        return cls(address) if address else None

    def send(self, **fields: str) -> bool:
        """Send one message; returns False (and counts a drop) when it could not be delivered now."""
        # A newline inside a value would start a new KEY=value assignment: never let text do that.
        text = "\n".join(f"{key}={' '.join(str(value).split())}" for key, value in fields.items())
        try:
            self._sock.sendto(text.encode(), self._target)
        except OSError as err:
            # EAGAIN (buffer full), ECONNREFUSED / ENOENT (manager gone): dropping is the only option
            # that keeps the loop running; logged once so a missing manager does not flood the log.
            self.dropped += 1
            DROPPED.inc()
            if not self._warned:
                self._warned = True
                log.warning("sd_notify message dropped", socket=self.address, error=str(err))
            return False
        self.sent += 1
        SENT.inc()
        return True

    def ready(self, status: str | None = None) -> bool:
        fields = {"READY": "1"}
        if status is not None:
            fields["STATUS"] = status
        return self.send(**fields)

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def stopping(self, status: str | None = None) -> bool:
        fields = {"STOPPING": "1"}
        if status is not None:
            fields["STATUS"] = status
        return self.send(**fields)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG="1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more start (or stop) time, e.g. while a slow first poll round is still running."""
        return self.send(EXTEND_TIMEOUT_USEC=str(int(seconds * 1_000_000)))

    async def watchdog_loop(self, interval: float, alive: Callable[[], bool]) -> None:
        """Send WATCHDOG=1 every `interval` seconds while `alive()` is true; never returns.

        The heartbeat is this coroutine getting scheduled at all (a blocked event loop sends nothing),
        plus `alive()`, the daemon's own proof of progress (e.g. a poll round finished recently).
        When `alive()` turns false the pings stop and systemd restarts the service after WatchdogSec.
        """
        if interval <= 0:
            raise ValueError(f"watchdog interval must be positive, not {interval}")
        healthy = True
        while True:
            if alive():
                if not healthy:
                    log.info("watchdog: progress again, pinging")
                healthy = True
                self.watchdog()
            elif healthy:
                healthy = False
                log.error("watchdog: no progress, withholding WATCHDOG=1")
            await asyncio.sleep(interval)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def watchdog_interval(configured: float | None, environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings: the configured value (0 or None: not configured), else half of
    $WATCHDOG_USEC, else None. A configured value that would not beat systemd's WatchdogSec is replaced
    by half of it, with a warning.

    $WATCHDOG_PID, when set, names the process the watchdog is meant for; another process (a child
    that inherited the environment) must not ping on the service's behalf.
    """
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        usec = 0
    limit = usec / 1_000_000 if usec > 0 else None
    if configured:
        if limit is not None and configured >= limit:
            # Pinging at (or slower than) WatchdogSec gets the service killed however healthy it is.
            log.warning("systemd.watchdog_interval is not below WatchdogSec: using half of WatchdogSec",
                        configured=configured, watchdog_sec=limit)
            return limit / 2
        return configured
    return limit / 2 if limit is not None else None
