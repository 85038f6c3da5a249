"""The daemon: one asyncio.TaskGroup of named tasks.

    device:<id>        one coordinator per device (poll loop or subscription)
    outbox:<name>      outbox writers (memory -> disk)
    mqtt-publisher     outbox -> broker
    ingest-receive     broker -> ingest outbox          (ingest.source: broker, or `dcim ingest`)
    ingest-write       ingest outbox -> database        (the publisher hands it its payloads when source: local)
    rules              derived metrics, alarm timers     (rules/)
    http-api           /healthz, /metrics, /api/v1/..., the web console (dcim/app/console)
    ready-watch        READY, STATUS and the watchdog under systemd (not critical: it ends without systemd)
    reload             SIGHUP: the configuration again, devices and rules without a restart

Every task but ready-watch runs under a Supervisor (dcim.app.supervise): an unexpected exception is logged
once, counted and the task restarts with backoff, so the daemon ends only on a signal or a start-up error.
Everything that can fail at start-up (the instance lock on state_dir, the outboxes, the HTTP listener) is
taken before any long-running task starts: such a failure is one line and exit status 1, whatever else is
configured (dcim.app.instance.StartupError).

Shutdown (SIGTERM, SIGINT, or `stop` set): the producers stop first, then the publisher drains its outbox
to the broker and the ingest drains its outbox (and the broker, when it takes from there) to the database,
each for a bounded time; what is still queued stays in the outboxes on disk for the next start. Nothing is
lost either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import BaseModel

from dcim.app import sdnotify
from dcim.app.config import Config, ConfigError, Device, load_config
from dcim.app.console import Console
from dcim.app.http_api import HttpApi
from dcim.app.ingest import Ingest, LocalFeed
from dcim.app.ingest_workers import IngestWorkers
from dcim.app.instance import RESERVE_BYTES, Claim, Reserve, StartupError, instance_tag, serves_http
from dcim.app.poller import (
    OVERRUNS,
    DeviceCoordinator,
    lag_target,
    make_driver,
    polling_summary,
    watch_loop_lag,
    wire_backpressure,
)
from dcim.app.pollworkers import START_SECONDS, PollWorkers, worker_count
from dcim.app.publisher import MqttPublisher
from dcim.app.supervise import Supervisor
from dcim.core.audit import AuditLog
from dcim.core.collector import freeze_grown
from dcim.core.collector import paused as collector_paused
from dcim.core.collector import settle as settle_collector
from dcim.core.collector import watch as watch_collector
from dcim.core.journal import Journal, Outbox
from dcim.core.logs import setup_logging
from dcim.core.outbox import ItemQueue
from dcim.core.pipeline import Pipeline
from dcim.core.samples import Value
from dcim.core.sqlite import SqliteWriter
from dcim.core.topology import Topology
from dcim.drivers.base import DeviceBase, Driver, DriverContext, Subscriber
from dcim.drivers.errors import DriverError
from dcim.drivers.profiles import available_profiles, load_profile
from dcim.rules.notify import Notifier
from dcim.rules.service import RuleService
from dcim.rules.writes import WriteGuard, WriteRefused, WriteRequest, WriteResult

if TYPE_CHECKING:
    from dcim.app.cluster.node import ClusterNode

log = structlog.get_logger(__name__)

DRAIN_SECONDS = 5.0
# A stopping cluster node polls its devices this long (at least) after their new owners hold them.
HANDOVER_OVERLAP_S = 2.0
# Devices named in the "stopped" record with their overrun counts.
STOP_LOG_OVERRUNS = 50
# Under systemd, while the first poll round moves, more start time is asked for (EXTEND_TIMEOUT_USEC) at each
# watchdog interval (at most every START_EXTEND_EVERY s), START_EXTEND_SECONDS at a time: a round of many
# devices that do not answer (a network not up yet after a power cut) outlasts the unit's TimeoutStartSec,
# and systemd would kill the daemon and start it again, in a loop for as long as the network is down.
START_EXTEND_EVERY = 10.0
START_EXTEND_SECONDS = 30.0


# Sections SIGHUP applies at once; a change anywhere else is logged as needing a restart, one line per section,
# listed in /healthz (`restart_required`) until a restart or a file that reverts it, and the running values stay.
# `logging` is applied at once too: a level raised to debug while a problem is on is what an operator wants.
RELOADABLE = ("devices", "rooms", "rules", "logging")
LEVELS = ("debug", "info", "warning", "error")


class Daemon:
    def __init__(self, config: Config, *, ingest: bool | None = None, poll: bool = True,
                 config_path: str | Path | None = None, claim: Claim | None = None,
                 owns_process: bool = False) -> None:
        self.config = config
        # The daemon is the process (`dcim run`, `dcim ingest`), not a guest in a test, the demo or a tool:
        # it may set process-wide things such as the garbage collector.
        self.owns_process = owns_process
        self.config_path = Path(config_path) if config_path is not None else None
        self.state_dir = Path(config.state_dir)
        # First of all: a second instance on this state_dir must not touch its stores, not even to open them.
        # `dcim run` took the claim (lock and HTTP listener) before importing this module; it is ours now.
        self.claim = claim if claim is not None else Claim.take(config, poll=poll)
        self.lock = self.claim.lock
        self.reserve = Reserve(self.state_dir)
        if self.claim.reserve_released:
            log.warning("state_dir's disk is full at start: gave up the reserve to open the stores; telemetry, "
                        "alarms and status are kept in memory until the disk has room",
                        state_dir=str(self.state_dir), reserve=str(self.reserve.path), bytes=RESERVE_BYTES)
        try:
            # The devices, decode plans, topology and bound rules live as long as the daemon: no collection
            # while they are built (about 20 s of a 37 s start at 21,500 devices). `settle()` follows (in a
            # process of its own, which is why what was built is frozen till then).
            with collector_paused(freeze=owns_process):
                self._build(config, ingest=ingest, poll=poll)
        except sqlite3.Error as err:
            # The alarm store is read at construction: a disk too full (or failing) to open it, one line.
            self.claim.release()
            raise StartupError(f"cannot open the stores in state_dir {self.state_dir}: {err}"
                               f"{self._disk_hint()}") from None
        except BaseException:
            self.claim.release()
            raise

    def _disk_hint(self) -> str:
        free = self.reserve.free_bytes()
        if free is None or free >= RESERVE_BYTES:
            return ""
        return f" (the disk is full and there is no {self.reserve.path.name} to give up)"

    def _build(self, config: Config, *, ingest: bool | None, poll: bool) -> None:
        self.instance = instance_tag(self.state_dir)
        self.poll = poll
        self.supervisor = Supervisor()
        self.topology = Topology(config)
        self.pipeline = Pipeline()
        self.context = DriverContext()
        self.coordinators: dict[str, DeviceCoordinator] = {}
        # What holds items on disk (outboxes, the journal); each one's `views()` is what its consumers see.
        self.outboxes: list[Outbox | Journal] = []
        self.publisher: MqttPublisher | None = None
        self.ingest: Ingest | None = None
        self.rules: RuleService | None = None
        self.notifier: Notifier | None = None
        self.http: HttpApi | None = None
        self.console: Console | None = None
        self.ready = asyncio.Event()
        # The one SQLite writer thread of the process: outboxes, alarm store and notifier state all use it.
        self.writer = SqliteWriter(name="sqlite-writer")
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._reload_requested = asyncio.Event()
        self.reloads = 0
        # Sections of the file on disk that differ from the running configuration and wait for a restart.
        self.restart_required: list[str] = []
        run_ingest = config.ingest.enabled if ingest is None else ingest
        # ingest.workers: `dcim ingest` processes beside this one take the broker's messages (shared
        # subscription) instead of the in-process ingest. Only `dcim run` starts them, from its own file.
        self.ingest_workers: IngestWorkers | None = None
        if poll and config.ingest.workers and self.config_path is not None:
            self.ingest_workers = IngestWorkers(self.config_path.resolve(), config.ingest.workers)
            run_ingest = False
        extra = config.extra_profile_dirs()
        # workers: poll worker processes run the drivers of polled devices (dcim/app/pollworkers.py).
        self.poll_workers: PollWorkers | None = None
        workers = worker_count(config.workers) if poll else 0
        if workers:
            self.poll_workers = PollWorkers(workers, log_level=config.logging.level,
                                            log_format=config.logging.format)

        # Order of sinks matters: rules first (added by _wire_rules), the publisher last.
        self._wire_rules()
        # In a cluster the shards this node holds decide which devices it polls (dcim.app.cluster).
        clustered = config.cluster is not None and poll
        found = available_profiles(extra)  # once, not once a device
        for device in config.devices:
            if not device.enabled or not poll or clustered:
                continue
            self.coordinators[device.id] = self._coordinator(device, extra, found)
        # The daemon's own readings reach the in-process ingest without the broker (ingest.source: local):
        # the publisher and the ingest read one journal on disk, each through its own cursor.
        local = poll and config.ingest.source == "local"
        want_ingest = bool((config.mqtt.host or local) and run_ingest and config.influxdb is not None)
        want_publisher = bool(config.mqtt.host and poll)
        consumers: dict[str, int] = {}
        if want_publisher:
            consumers["mqtt"] = config.mqtt.outbox_max_messages
        if want_ingest and local and config.influxdb is not None:
            consumers["ingest"] = config.influxdb.outbox_max_lines
        journal: Journal | None = None
        if consumers:
            # The outboxes of versions before the journal are taken in at the first start.
            journal = Journal(self.state_dir / "journal.sqlite", consumers=consumers, writer=self.writer,
                              legacy={"mqtt": self.state_dir / "mqtt-outbox.sqlite",
                                      "ingest": self.state_dir / "ingest-outbox.sqlite"})
            self.outboxes.append(journal)
        if want_ingest:
            ingest_box: ItemQueue
            if journal is not None and local:
                ingest_box = journal.cursor("ingest")
            else:
                assert config.influxdb is not None
                outbox = Outbox(self.state_dir / "ingest-outbox.sqlite", name="ingest",
                                max_items=config.influxdb.outbox_max_lines, writer=self.writer)
                self.outboxes.append(outbox)
                ingest_box = outbox
            self.ingest = Ingest(config, ingest_box, local=local)
        if want_publisher and journal is not None:
            # Only an ingest that takes from the broker must be subscribed before anything is sent.
            gate = self.ingest.subscribed if self.ingest is not None and not self.ingest.local else None
            if self.ingest_workers is not None:
                gate = self.ingest_workers.subscribed  # every worker subscribed to the group
            self.publisher = MqttPublisher(config.mqtt, self.topology, journal.cursor("mqtt"), gate=gate,
                                           instance=self.instance)
            self.pipeline.add_sink(self.publisher, deferrable=True)
            if self.rules is not None:
                self.rules.alarm_outlet = self.publisher
        if self.ingest is not None and self.ingest.local:
            if self.publisher is not None and config.mqtt.payload != "json":
                self.publisher.share = ("ingest",)  # one row for both: the published bytes themselves
            else:
                self.pipeline.add_sink(LocalFeed(self.ingest, self.topology), deferrable=True)
        wire_backpressure(self.pipeline, self.publisher, self.ingest)
        self._retarget_lag()
        self.cluster = self._join_cluster(config) if clustered else None
        self._judge_own_shards()  # none yet: the shards this node is given are judged once it has them
        # The one write path (rules.writes): rule actions and the HTTP API write through it, audited.
        self.audit = AuditLog(self.state_dir / "audit.log")
        self.guard = WriteGuard(config.rules.control, self.topology, drivers=self._driver,
                                maintenance=self.rules.store if self.rules is not None else None, audit=self.audit,
                                publish=self.publisher.on_batch if self.publisher is not None else None)
        if self.rules is not None:
            self.rules.control.on_refused = self.guard.note_refusal
        if self.cluster is not None:
            self.guard.fence = self.cluster.fence_write  # every write: this node's shard, confirmed by etcd
        if self.rules is not None and serves_http(config, poll=poll):
            self.http = HttpApi(config.http, self.rules.store, health=self.health, sockets=self.claim.sockets)
            self.http.writes = self.guard  # read by dcim/app/api_writes.py
            self.http.audit = self.audit  # acknowledgements, shelves and windows are recorded too
            if config.http.console:
                # The web console on the same server: the latest samples from the pipeline (last sink).
                self.console = Console(self, config.http)
                self.pipeline.add_sink(self.console.live)
                self.console.register(self.http.app)

    def _coordinator(self, device: DeviceBase, extra: tuple[Path, ...],
                     found: Mapping[str, Path]) -> DeviceCoordinator:
        """`found`: the profiles in the directories (`available_profiles`), listed once for all devices."""
        profile = load_profile(device.profile, extra, found)
        # With poll workers a polled device's driver runs in one of them. Whether it polls, a driver made on a
        # context of its own says (it connects to nothing, and what it would share, a gateway's connection,
        # is not kept here); a subscription stays in the daemon, on the daemon's context.
        if self.poll_workers is not None and not isinstance(make_driver(device, profile, DriverContext()), Subscriber):
            return DeviceCoordinator(device, self.poll_workers.remote(device, profile, extra), self.pipeline)
        return DeviceCoordinator(device, make_driver(device, profile, self.context), self.pipeline)

    def _wire_rules(self) -> None:
        """The rule engine is the pipeline's first sink: it sees every sample before MQTT does. With
        `rules.enabled: false` it binds no rule and raises no alarm, but it is still built: it derives the
        rack and plant metrics (the dashboards' rack power), and the HTTP API is served from its store."""
        if self.config.rules.enabled and self.config.rules.notifications.hooks:
            self.notifier = Notifier(self.config.rules.notifications, self.state_dir, writer=self.writer)
        self.rules = RuleService(self.config, self.topology, controller=self, publish=self.pipeline.publish_derived,
                                 notifier=self.notifier, writer=self.writer)
        self.pipeline.add_sink(self.rules.sink)

    def _join_cluster(self, config: Config) -> ClusterNode:
        """The cluster node (imported here: its etcd client is the optional extra dcim[cluster]). The rule
        engine's pages go to etcd, and only the leader hands them to the notifier."""
        from dcim.app.cluster.node import ClusterNode

        assert config.cluster is not None
        node = ClusterNode(config.cluster, config, apply=self._apply_shards, notifier=self.notifier,
                           overlap=handover_overlap(d.interval for d in config.devices if d.enabled))
        if self.rules is not None:
            self.rules.notifier = node.alarm_outlet
            if self.rules.publish is not None:
                self.rules.publish = node.filter_publish(self.rules.publish)
            if self.rules.alarm_outlet is not None:
                self.rules.alarm_outlet = node.filter_outlet(self.rules.alarm_outlet)
        return node

    async def _apply_shards(self, devices: set[str]) -> None:
        """Poll exactly `devices` (this node's shards of the cluster), with SIGHUP's start/stop machinery, and
        judge the rules of those shards only (rebuilt on the same alarm store, as at a SIGHUP)."""
        running = [d for d in self.config.devices if d.id in self.coordinators]
        try:
            await self._apply_devices(running, [d for d in self.config.devices if d.id in devices])
        finally:
            self._judge_own_shards()
            if self.owns_process:
                settle_collector()  # as at a reload: the devices given up are collected

    def _judge_own_shards(self) -> None:
        if self.rules is not None and self.cluster is not None:
            shard = self.cluster.shard_hall(self.config)
            self.rules.reload(shard, Topology(shard))

    # ---- control: the one path by which anything writes to a device ----------------------------------

    def _driver(self, device: str) -> Driver | None:
        coordinator = self.coordinators.get(device)
        return coordinator.driver if coordinator is not None else None

    async def write(self, device: str, point: str, value: Value, *, origin: str = "rule") -> WriteResult:
        """A rule action's write (rules.control), through the guard: refused raises WriteRefused."""
        result = await self.guard.write(WriteRequest(device, point, value, origin))
        if result.outcome == "refused":
            raise WriteRefused(result.reason)
        if result.outcome == "failed":
            raise DriverError(result.reason)
        return result

    # ---- lifecycle ----------------------------------------------------------------------------------------

    def summary(self) -> str:
        online = sum(1 for c in self.coordinators.values() if c.online)
        dropped = sum(o.dropped for o in self.outboxes)
        firing = len(self.rules.store.active()) if self.rules is not None else 0
        return f"{len(self.coordinators)} devices, {online} online, {firing} alarms active, {dropped} dropped"

    def check(self) -> tuple[list[str], list[str]]:
        """(critical tasks not running, devices whose poller completed no poll for three intervals)."""
        dead = self.supervisor.dead()
        stale = sorted(d for d, c in self.coordinators.items() if c.stale())
        return dead, stale

    def alive(self) -> bool:
        """The liveness verdict, for /healthz and the systemd watchdog alike: every critical task runs and
        every poller completed a poll (a success or a recorded failure) within three intervals."""
        dead, stale = self.check()
        return not dead and not stale

    def health(self) -> dict[str, Any]:
        dead, stale = self.check()
        return {
            "ok": not dead and not stale,
            "summary": self.summary(),
            "devices": {d: {"online": bool(c.online), "error": c.last_error or None}
                        for d, c in self.coordinators.items()},
            "mqtt_connected": self.publisher.connected.is_set() if self.publisher else None,
            "ingest_subscribed": self.ingest.subscribed.is_set() if self.ingest else None,
            **({"ingest_workers": self.ingest_workers.status()} if self.ingest_workers is not None else {}),
            **({"poll_workers": self.poll_workers.status(c.driver for c in self.coordinators.values())}
               if self.poll_workers is not None else {}),
            "outboxes": {q.name: {"depth": q.depth, "dropped": q.dropped, "degraded": q.degraded}
                         for o in self.outboxes for q in o.views()},
            "hooks": self.notifier.health() if self.notifier is not None else {},
            "polling": polling_summary(self.coordinators.values(), self.pipeline),
            "dead_tasks": dead,
            "stale_devices": stale,
            "task_failures": self.supervisor.report(),
            "restart_required": self.restart_required,
            **({"cluster": self.cluster.status()} if self.cluster is not None else {}),
        }

    async def _prepare(self) -> None:
        """Everything that can fail at start-up, before any long-running task exists: the outboxes on
        state_dir and the HTTP listener. A failure undoes what was done and raises StartupError."""
        opened: list[Outbox | Journal] = []
        try:
            for box in self.outboxes:
                try:
                    await box.open()
                except Exception as err:
                    raise StartupError(f"cannot open the {box.name} outbox in state_dir {self.state_dir}: "
                                       f"{err}{self._disk_hint()}") from None
                opened.append(box)
            if self.http is not None:
                try:
                    await self.http.start()
                except OSError as err:
                    where = f"{self.config.http.host}:{self.config.http.port}"
                    reason = os.strerror(err.errno).lower() if err.errno else str(err)
                    raise StartupError(f"http api cannot listen on {where}: {reason}") from None
        except BaseException:
            for box in opened:
                await box.close()
            raise

    def _start(self, name: str, factory: Callable[[], Awaitable[Any]], *, critical: bool = True,
               on_error: Callable[[BaseException], None] | None = None) -> None:
        assert self._tg is not None
        self._tasks[name] = self._tg.create_task(
            self.supervisor.run(name, factory, critical=critical, on_error=on_error), name=name)

    def _start_device(self, coordinator: DeviceCoordinator) -> None:
        self._start(coordinator.name, coordinator.run, on_error=coordinator.fail)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        try:
            await self._prepare()
        except BaseException:
            await self.writer.close()
            self.claim.release()
            raise
        if self.owns_process:
            # Everything start-up built is built: out of the garbage collector's walk (dcim.core.collector).
            watch_collector()
            log.info("garbage collector settled", frozen_objects=settle_collector())
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                start = self._start
                for box in self.outboxes:
                    start(f"outbox:{box.name}", box.run)
                if self.publisher is not None:
                    start("mqtt-publisher", self.publisher.run)
                else:
                    log.warning("mqtt.host is not set: samples are not published (rules still run)")
                if self.ingest is not None:
                    if not self.ingest.local:
                        start("ingest-receive", self.ingest.receive)
                    start("ingest-write", self.ingest.write_loop)
                if self.ingest_workers is not None:
                    start("ingest-workers", self.ingest_workers.run)
                if self.poll_workers is not None:
                    start("poll-workers", self.poll_workers.run)
                    # The first polls wait for the workers (imports take a second or two): a device is not
                    # reported unreadable because its worker was still starting.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(START_SECONDS):
                            await self.poll_workers.started()
                for coordinator in self.coordinators.values():
                    self._start_device(coordinator)
                if self.notifier is not None:
                    start("notifier", self.notifier.run)
                if self.rules is not None:
                    start("rules", self.rules.run)
                if self.http is not None:
                    start("http-api", self.http.serve)
                if self.cluster is not None:
                    start("cluster", self.cluster.run)
                start("reload", self._reload_loop)
                start("reserve", self._keep_reserve, critical=False)
                start("loop-lag", functools.partial(watch_loop_lag, admission=self.pipeline.admission),
                      critical=False)
                # Not critical: without systemd it has nothing left to do after the first poll round.
                self._tasks["ready-watch"] = tg.create_task(self._watch_ready(), name="ready-watch")
                log.info("daemon started", site=self.config.site.id, devices=len(self.coordinators),
                         mqtt=self.config.mqtt.host or "none",
                         ingest="on" if self.ingest else (
                             f"{self.ingest_workers.count} workers" if self.ingest_workers else "off"),
                         poll_workers=len(self.poll_workers.workers) if self.poll_workers else 0,
                         instance=self.instance)
                await stop.wait()
                log.info("stopping")
                await self._shutdown()
        finally:
            self._tg = None
            if self.poll_workers is not None:
                self.poll_workers.close()
            try:
                if self.http is not None:
                    await self.http.close()
                for box in self.outboxes:
                    await box.close()
            finally:
                # Last: everything submitted by the tasks above is written, then the files are closed.
                await self.writer.close()
                self.claim.release()
            # The polls that started late in this process's life, of every device it polled (the most first):
            # how a loaded host is told apart from a gap in a hand-over of a rolling restart.
            late = sorted(((int(n), key[0]) for key, n in OVERRUNS.values.items() if n), reverse=True)
            log.info("stopped", overruns_total=sum(n for n, _ in late),
                     overruns={d: n for n, d in late[:STOP_LOG_OVERRUNS]})

    async def _watch_ready(self) -> None:
        """READY once every device was polled once (until then, under systemd, more start time while the
        round moves); then STATUS and the watchdog under systemd."""
        notifier = sdnotify.Notifier.from_env()
        try:
            await self._first_round(notifier)
            self.ready.set()
            log.info("first poll round done", summary=self.summary())
            if self.owns_process:
                # What the round built (each point's reading and live record) lives as long as the process.
                log.info("garbage collector: the first round's objects frozen", frozen_objects=freeze_grown())
            if notifier is None:
                return
            notifier.ready(self.summary())
            interval = sdnotify.watchdog_interval(self.config.systemd.watchdog_interval)
            async with asyncio.TaskGroup() as tg:
                if interval:
                    tg.create_task(notifier.watchdog_loop(interval, self.alive), name="watchdog")
                tg.create_task(self._status_loop(notifier), name="sd-status")
        finally:
            if notifier is not None:
                notifier.stopping()
                notifier.close()

    async def _first_round(self, notifier: sdnotify.Notifier | None) -> None:
        """Until every device was polled once. Under systemd, at each watchdog interval (at most every
        START_EXTEND_EVERY s) while the pollers move (`alive`: every poller waits in a queue that moves, polls,
        or polled within three intervals), START_EXTEND_SECONDS more of start time, and how far the round
        is in STATUS. A round that stops moving gets no more: systemd's TimeoutStartSec applies again."""
        polled = [c.polled for c in self.coordinators.values()]
        first = asyncio.ensure_future(asyncio.gather(*(p.wait() for p in polled)))
        try:
            if notifier is not None:
                every = min(START_EXTEND_EVERY,
                            sdnotify.watchdog_interval(self.config.systemd.watchdog_interval) or START_EXTEND_EVERY)
                while not first.done():
                    await asyncio.wait((first,), timeout=every)
                    if not first.done() and self.alive():
                        notifier.extend_timeout(max(START_EXTEND_SECONDS, 3 * every))
                        done = sum(1 for p in polled if p.is_set())
                        notifier.status(f"first poll round: {done} of {len(polled)} devices polled")
            await first
        finally:
            first.cancel()

    async def _status_loop(self, notifier: sdnotify.Notifier) -> None:
        last = ""
        while True:
            text = self.summary()
            if text != last:
                notifier.status(text)
                last = text
            await asyncio.sleep(5.0)

    async def _keep_reserve(self) -> None:
        """Make state_dir's reserve (dcim.app.instance.Reserve) once the disk has room for it, then end."""
        # Polled: nothing tells a process that another one freed room on the disk.
        while True:
            if await asyncio.to_thread(self.reserve.make):
                break
            await asyncio.sleep(30.0)
        if self.claim.reserve_released:
            log.info("state_dir's disk has room again: reserve made", reserve=str(self.reserve.path))

    # ---- SIGHUP: reload ------------------------------------------------------------------------------

    def request_reload(self) -> None:
        """From the SIGHUP handler: reloads run one at a time in the `reload` task."""
        self._reload_requested.set()

    async def _reload_loop(self) -> None:
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            await self.reload()

    async def reload(self) -> bool:
        """Validate the configuration file again and apply it: devices added, removed and changed start,
        stop and restart (the others are not touched); rules and topology are rebuilt on the same alarm
        store. A file with errors changes nothing: each error is logged with its path. Returns whether the
        new configuration was applied."""
        if self.config_path is None:
            log.warning("reload requested, but the daemon was not started from a configuration file")
            return False
        log.info("reloading the configuration", path=str(self.config_path))
        try:
            new = await asyncio.to_thread(load_config, self.config_path)
        except ConfigError as err:
            for path, message in err.errors:
                log.error("reload refused: configuration invalid; the running one stays",
                          source=err.source, path=path, error=message)
            return False
        old = self.config
        later = {name: _changed_keys(getattr(old, name), getattr(new, name)) for name in type(old).model_fields
                 if name not in RELOADABLE and getattr(old, name) != getattr(new, name)}
        # The notifier, the alarm store and whether the engine runs at all are wired at start.
        fixed = {"enabled": old.rules.enabled, "store": old.rules.store, "notifications": old.rules.notifications}
        later |= {f"rules.{key}": _changed_keys(value, getattr(new.rules, key))
                  for key, value in fixed.items() if getattr(new.rules, key) != value}
        for section, keys in later.items():
            # Keys, never values: a section may hold secrets (tokens, passwords, webhook URLs).
            log.warning("reload: section changed; it takes effect at the next restart, the running values stay",
                        section=section, keys=keys or None)
        if new.logging != old.logging:
            # Said under the more verbose of the two levels, so that it is seen either way.
            quieter = LEVELS.index(new.logging.level) > LEVELS.index(old.logging.level)
            if quieter:
                log.info("reload: logging applied", logging_level=new.logging.level, logging_format=new.logging.format)
            setup_logging(new.logging.level, new.logging.format)
            if not quieter:
                log.info("reload: logging applied", logging_level=new.logging.level, logging_format=new.logging.format)
        rules = new.rules.model_copy(update=fixed)
        merged = old.model_copy(update={"devices": new.devices, "rooms": new.rooms, "rules": rules,
                                        "logging": new.logging})
        before, after = old.devices, new.devices
        if self.cluster is not None:  # only the devices of this node's shards, as the new file groups them
            self.cluster.set_topology(new)
            before = [d for d in old.devices if d.id in self.coordinators]
            after = [d for d in new.devices if self.cluster.owns(d.id)]
        try:
            await self._apply_devices(before, after)
        finally:
            # Devices already swapped must see their topology, whatever happened to the others.
            self.config = merged
            self.topology = Topology(merged)
            if self.publisher is not None:
                self.publisher.topology = self.topology
            if self.cluster is not None:
                self._judge_own_shards()  # the new file, this node's shards of it
            elif self.rules is not None:
                # Bound between the loop's turns: at 21,500 CDUs, 322,500 rules took the loop 4-5 s in one go.
                await self.rules.reload_async(merged, self.topology, freeze=self.owns_process)
        if self.owns_process:
            # The replaced configuration, topology and devices were frozen at start: thawed and collected.
            settle_collector()
        self.reloads += 1
        self.restart_required = sorted(later)
        log.info("configuration reloaded", devices=len(self.coordinators), reloads=self.reloads)
        return True

    async def _apply_devices(self, before: list[Device], after: list[Device]) -> None:
        if not self.poll:
            return
        old = {d.id: d for d in before if d.enabled}
        new = {d.id: d for d in after if d.enabled}
        stopped = [i for i in old if i not in new or new[i] != old[i]]
        started = [i for i in new if i not in old or new[i] != old[i]]
        # Build the new drivers first: a profile that fails to load leaves the running device alone.
        extra = self.config.extra_profile_dirs()
        fresh: dict[str, DeviceCoordinator] = {}
        found = available_profiles(extra)
        for device_id in started:
            try:
                fresh[device_id] = self._coordinator(new[device_id], extra, found)
            except Exception as err:
                log.error("reload: device not (re)started", device=device_id, error=str(err))
        for device_id in stopped:
            if device_id not in new or device_id in fresh:
                await self._stop_device(device_id)
        for device_id, coordinator in fresh.items():
            self.coordinators[device_id] = coordinator
            self._start_device(coordinator)
        self._retarget_lag()
        if stopped or started:
            log.info("reload: devices changed", stopped=sorted(set(stopped) - set(started)),
                     started=sorted(set(started) - set(stopped)),
                     restarted=sorted(set(started) & set(stopped)))

    def _retarget_lag(self) -> None:
        """The event loop lag the polls in flight follow: a fraction of the shortest interval polled now."""
        self.pipeline.admission.lag_target = lag_target(c.device.interval for c in self.coordinators.values())

    async def _stop_device(self, device_id: str) -> None:
        coordinator = self.coordinators.pop(device_id, None)
        if coordinator is None:
            return
        task = self._tasks.pop(coordinator.name, None)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.supervisor.forget(coordinator.name)
        coordinator.polled.set()  # a device removed before its first poll must not hold READY back

    async def _cancel(self, prefixes: tuple[str, ...]) -> None:
        tasks = [t for n, t in self._tasks.items() if n.startswith(prefixes) and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _shutdown(self) -> None:
        if self.cluster is not None:
            # Make before break: the lease goes back first, so the others claim this node's shards at once,
            # and its devices are polled here until another node owns them (bounded by the lease TTL).
            polled = self.cluster.polling | set(self.cluster.lingering)
            await self._cancel(("cluster",))
            if await self.cluster.handed_over(polled, timeout=self.cluster.ttl + 2) and self.coordinators:
                # And a little longer, for the new owners to start their pollers and make their first polls
                # (slow on a loaded host). Meanwhile both poll; only the owner writes and pages.
                await asyncio.sleep(handover_overlap(c.device.interval for c in self.coordinators.values()))
        await self._cancel(("reload", "device:", "ready-watch", "rules", "http-api"))
        if self.publisher is not None and self.publisher.connected.is_set():
            if not await self.publisher.drain(DRAIN_SECONDS):
                log.warning("broker did not take everything in time; the rest stays in the outbox",
                            queued=self.publisher.outbox.depth)
        if self.ingest is not None and self.ingest.subscribed.is_set():
            if not await self.ingest.drain(DRAIN_SECONDS):
                log.warning("database did not take everything in time; the rest stays in the outbox",
                            queued=self.ingest.outbox.depth)
        await self._cancel(("",))


def handover_overlap(intervals: Iterable[float]) -> float:
    """How long a cluster node polls devices whose shards another node has taken over (at a stop, or when it
    gives a shard back to the node rendezvous hashing names): two intervals, at least HANDOVER_OVERLAP_S,
    at most 5 s."""
    return min(5.0, max(HANDOVER_OVERLAP_S, 2 * max(intervals, default=0.0)))


def _changed_keys(old: Any, new: Any) -> list[str]:
    """The fields that differ between two values of one configuration section (none for a plain value)."""
    if not isinstance(old, BaseModel) or type(old) is not type(new):
        return []
    return [key for key in type(old).model_fields if getattr(old, key) != getattr(new, key)]


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


async def run_daemon(config: Config, *, ingest: bool | None = None, poll: bool = True,
                     config_path: str | Path | None = None, claim: Claim | None = None) -> None:
    """`dcim run` (and `dcim ingest`, with poll=False): until SIGTERM or SIGINT; SIGHUP reloads."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    stop_on_signals(stop)
    try:
        daemon = Daemon(config, ingest=ingest, poll=poll, config_path=config_path, claim=claim, owns_process=True)
        # SIGHUP's default action ends the process: a reload instead, once there is a daemon to reload.
        loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)
        await daemon.run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
