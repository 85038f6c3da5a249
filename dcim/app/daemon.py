"""The daemon: one asyncio.TaskGroup of named tasks.

    device:<id>        one coordinator per device (poll loop or subscription)
    outbox:<name>      outbox writers (memory -> disk)
    mqtt-publisher     outbox -> broker
    ingest-receive     broker -> ingest outbox          (when influxdb is configured and ingest enabled)
    ingest-write       ingest outbox -> database
    rules              derived metrics, alarm timers     (rules/)
    http-api           /healthz, /metrics, /api/v1/...

Shutdown (SIGTERM, SIGINT, or `stop` set): the producers stop first, then the publisher drains its outbox
to the broker and the ingest drains the broker to the database, each for a bounded time; what is still
queued stays in the outboxes on disk for the next start. Nothing is lost either way.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import structlog

from dcim.app import sdnotify
from dcim.app.config import Config
from dcim.app.http_api import HttpApi
from dcim.app.ingest import Ingest
from dcim.app.poller import DeviceCoordinator, make_driver
from dcim.app.publisher import MqttPublisher
from dcim.core.outbox import Outbox
from dcim.core.pipeline import Pipeline
from dcim.core.samples import Value
from dcim.core.sqlite import SqliteWriter
from dcim.core.topology import Topology
from drivers.base import DriverContext
from drivers.errors import WriteRejected
from drivers.profiles import load_profile
from rules.notify import Notifier
from rules.service import RuleService

log = structlog.get_logger(__name__)

DRAIN_SECONDS = 5.0


class Daemon:
    def __init__(self, config: Config, *, ingest: bool | None = None, poll: bool = True) -> None:
        self.config = config
        self.state_dir = Path(config.state_dir)
        self.topology = Topology(config)
        self.pipeline = Pipeline()
        self.context = DriverContext()
        self.coordinators: dict[str, DeviceCoordinator] = {}
        self.outboxes: list[Outbox] = []
        self.publisher: MqttPublisher | None = None
        self.ingest: Ingest | None = None
        self.rules: RuleService | None = None
        self.notifier: Notifier | None = None
        self.http: HttpApi | None = None
        self.ready = asyncio.Event()
        # The one SQLite writer thread of the process: outboxes, alarm store and notifier state all use it.
        self.writer = SqliteWriter(name="sqlite-writer")
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        run_ingest = config.ingest.enabled if ingest is None else ingest
        extra = config.extra_profile_dirs()

        # Order of sinks matters: rules first (added by _wire_rules), the publisher last.
        self._wire_rules()
        for device in config.devices:
            if not device.enabled or not poll:
                continue
            profile = load_profile(device.profile, extra)
            driver = make_driver(device, profile, self.context)
            self.coordinators[device.id] = DeviceCoordinator(device, driver, self.pipeline)
        if config.mqtt.host and run_ingest and config.influxdb is not None:
            ingest_box = Outbox(self.state_dir / "ingest-outbox.sqlite", name="ingest",
                                max_items=config.influxdb.outbox_max_lines, writer=self.writer)
            self.outboxes.append(ingest_box)
            self.ingest = Ingest(config, ingest_box)
        if config.mqtt.host and poll:
            box = Outbox(self.state_dir / "mqtt-outbox.sqlite", name="mqtt",
                         max_items=config.mqtt.outbox_max_messages, writer=self.writer)
            self.outboxes.append(box)
            gate = self.ingest.subscribed if self.ingest is not None else None
            self.publisher = MqttPublisher(config.mqtt, self.topology, box, gate=gate)
            self.pipeline.add_sink(self.publisher)
            if self.rules is not None:
                self.rules.alarm_outlet = self.publisher
        if self.rules is not None and config.http.enabled and poll:
            self.http = HttpApi(config.http, self.rules.store, health=self.health)

    def _wire_rules(self) -> None:
        """The rule engine is the pipeline's first sink: it sees every sample before MQTT does."""
        if not self.config.rules.enabled:
            return
        if self.config.rules.notifications.hooks:
            self.notifier = Notifier(self.config.rules.notifications, self.state_dir, writer=self.writer)
        self.rules = RuleService(self.config, self.topology, controller=self, publish=self.pipeline.publish,
                                 notifier=self.notifier, writer=self.writer)
        self.pipeline.add_sink(self.rules.sink)

    # ---- control: the one path by which anything writes to a device ----------------------------------

    async def write(self, device: str, point: str, value: Value) -> None:
        coordinator = self.coordinators.get(device)
        if coordinator is None:
            raise WriteRejected(f"no device {device!r}")
        await coordinator.write(point, value)

    # ---- lifecycle ----------------------------------------------------------------------------------------

    def summary(self) -> str:
        online = sum(1 for c in self.coordinators.values() if c.online)
        dropped = sum(o.dropped for o in self.outboxes)
        firing = len(self.rules.store.active()) if self.rules is not None else 0
        return f"{len(self.coordinators)} devices, {online} online, {firing} alarms active, {dropped} dropped"

    def alive(self) -> bool:
        """Progress for the watchdog: samples went through the pipeline recently (a dead device still
        produces BAD samples on its interval, so only a stalled daemon stops them)."""
        if not self.coordinators:
            return True
        longest = max(c.device.interval for c in self.coordinators.values())
        return time.monotonic() - self.pipeline.last_publish < max(30.0, 3 * longest)

    def health(self) -> dict[str, Any]:
        dead = sorted(n for n, t in self._tasks.items() if t.done() and not t.cancelled())
        return {
            "ok": not dead and self.alive(),
            "summary": self.summary(),
            "devices": {d: {"online": bool(c.online), "error": c.last_error or None}
                        for d, c in self.coordinators.items()},
            "mqtt_connected": self.publisher.connected.is_set() if self.publisher else None,
            "ingest_subscribed": self.ingest.subscribed.is_set() if self.ingest else None,
            "outboxes": {o.name: {"depth": o.depth, "dropped": o.dropped, "degraded": o.degraded}
                         for o in self.outboxes},
            "hooks": self.notifier.health() if self.notifier is not None else {},
            "dead_tasks": dead,
        }

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        for box in self.outboxes:
            await box.open()
        try:
            async with asyncio.TaskGroup() as tg:
                def start(name: str, coro: Any) -> None:
                    self._tasks[name] = tg.create_task(coro, name=name)

                for box in self.outboxes:
                    start(f"outbox:{box.name}", box.run())
                if self.publisher is not None:
                    start("mqtt-publisher", self.publisher.run())
                else:
                    log.warning("mqtt.host is not set: samples are not published (rules still run)")
                if self.ingest is not None:
                    start("ingest-receive", self.ingest.receive())
                    start("ingest-write", self.ingest.write_loop())
                for coordinator in self.coordinators.values():
                    start(coordinator.name, coordinator.run())
                if self.notifier is not None:
                    start("notifier", self.notifier.run())
                if self.rules is not None:
                    start("rules", self.rules.run())
                if self.http is not None:
                    start("http-api", self.http.run())
                start("ready-watch", self._watch_ready())
                log.info("daemon started", site=self.config.site.id, devices=len(self.coordinators),
                         mqtt=self.config.mqtt.host or "none",
                         ingest="on" if self.ingest else "off")
                await stop.wait()
                log.info("stopping")
                await self._shutdown()
        finally:
            try:
                for box in self.outboxes:
                    await box.close()
            finally:
                # Last: everything submitted by the tasks above is written, then the files are closed.
                await self.writer.close()
            log.info("stopped")

    async def _watch_ready(self) -> None:
        """READY once every device was polled once; then STATUS and the watchdog under systemd."""
        await asyncio.gather(*(c.polled.wait() for c in self.coordinators.values()))
        self.ready.set()
        log.info("first poll round done", summary=self.summary())
        notifier = sdnotify.Notifier.from_env()
        if notifier is None:
            return
        try:
            notifier.ready(self.summary())
            interval = sdnotify.watchdog_interval(self.config.systemd.watchdog_interval)
            async with asyncio.TaskGroup() as tg:
                if interval:
                    tg.create_task(notifier.watchdog_loop(interval, self.alive), name="watchdog")
                tg.create_task(self._status_loop(notifier), name="sd-status")
        finally:
            notifier.stopping()
            notifier.close()

    async def _status_loop(self, notifier: sdnotify.Notifier) -> None:
        last = ""
        while True:
            text = self.summary()
            if text != last:
                notifier.status(text)
                last = text
            await asyncio.sleep(5.0)

    async def _cancel(self, prefixes: tuple[str, ...]) -> None:
        tasks = [t for n, t in self._tasks.items() if n.startswith(prefixes) and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _shutdown(self) -> None:
        await self._cancel(("device:", "ready-watch", "rules", "http-api"))
        if self.publisher is not None and self.publisher.connected.is_set():
            if not await self.publisher.drain(DRAIN_SECONDS):
                log.warning("broker did not take everything in time; the rest stays in the outbox",
                            queued=self.publisher.outbox.depth)
        if self.ingest is not None and self.ingest.subscribed.is_set():
            if not await self.ingest.drain(DRAIN_SECONDS):
                log.warning("database did not take everything in time; the rest stays in the outbox",
                            queued=self.ingest.outbox.depth)
        await self._cancel(("",))


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM / SIGINT stop gracefully; a second one exits at once (what the outboxes hold stays on
    disk, what is only in memory is lost): the way out when a shutdown does not finish."""
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.error("second signal during shutdown: exiting now", signal=sig.name)
            os._exit(128 + sig.value)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)


async def run_daemon(config: Config, *, ingest: bool | None = None, poll: bool = True) -> None:
    """`dcim run` (and `dcim ingest`, with poll=False): until SIGTERM or SIGINT."""
    daemon = Daemon(config, ingest=ingest, poll=poll)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    stop_on_signals(stop)
    sdnotify.install_stall_hook(loop)
    try:
        await daemon.run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
