"""One coordinator per device: polls it on its interval (or runs its subscription), keeps its availability.

Like Home Assistant's update coordinator: `online` means the last poll succeeded; a failure is logged once and
the recovery once, however long the outage lasts. A device that stops answering gets BAD samples for every
point it last delivered (the gap is recorded, not silent), and never delays another device: each coordinator is
its own task and each poll runs under a deadline.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Iterable
from typing import Any

import structlog

from dcim.app.ingest import Ingest
from dcim.app.publisher import PUBLISHED, MqttPublisher
from dcim.core.aio import Deadline, SlotClock, reraise_lost_cancellation
from dcim.core.metrics import REGISTRY
from dcim.core.pipeline import Admission, Pipeline
from dcim.core.samples import Batch, DeviceStatus, Layout, Quality, Sample, Value, now_ns
from dcim.drivers import registry
from dcim.drivers.base import DeviceBase, Driver, DriverContext, Subscriber
from dcim.drivers.errors import DriverError
from dcim.drivers.profiles import ByProfile, Profile

log = structlog.get_logger(__name__)

POLLS = REGISTRY.counter("dcim_polls_total", "Device polls by result", ("device", "result"))
POLL_SECONDS = REGISTRY.summary("dcim_poll_seconds", "Duration of successful polls", ("device",))
ONLINE = REGISTRY.gauge("dcim_device_online", "1 when the device's last poll succeeded", ("device",))
OVERRUNS = REGISTRY.counter(
    "dcim_poll_overruns_total",
    "Polls that started more than half an interval after they were due (its schedule then moves on from "
    "the late start, with no catch-up polls)", ("device",))
OVERRUNS_ALL = REGISTRY.counter("dcim_poll_overruns_all_total", "dcim_poll_overruns_total of all devices together")
LATENESS = REGISTRY.summary("dcim_poll_lateness_seconds", "How late polls start after they are due (all devices; up to "
                            "one slot of the shared poll clock, 10 ms at most, is its rounding)")
_LATENESS = LATENESS.child()  # its one series, observed at every poll without making its key each time

# Caps of the outboxes' high-water marks, in messages. The mark itself is a second of what leaves at the
# measured pace (`MARK_SECONDS`), so that what is delivered past saturation is about a second old when it
# leaves; the cap only bounds it, below the journal's FRESH_MAX (consumers that keep up are handed rows in
# memory). A cap of 500 (a sixth of a second of what 1,000 CDUs publish) held the polls back at 28,000-29,000
# points/s with two thirds of the daemon's core idle: a hop's round trip (a database write) holds more. A hop
# takes at most the cap per round trip, so the cap is a ceiling on its pace: 4,000 held 4,200 CDUs (about
# 9,500 messages/s) at 81,000-93,000 points/s stored, 12,000 let them all through (102,600).
MQTT_BACKLOG_HIGH = 12000
INGEST_BACKLOG_HIGH = 12000
INGEST_STALL_SECONDS = 15.0
# Polls of online devices running at once, at most: enough for 4,000 devices at 1 s answering within
# 250 ms; past it, polls wait their turn in the admission instead of running past their deadlines. (256,
# for 1,000 devices, held 4,000 CDUs at 71,000-78,000 points/s stored with a fifth of the core idle: polls
# queued in the daemon's own loop take 50-80 ms there.)
POLLS_IN_FLIGHT = 1024
# ... and fewer while the event loop runs late (`Admission.follow_lag`): the limit shrinks while the loop's
# smoothed lag is above LAG_TARGET_FRACTION of the shortest poll interval (within LAG_TARGET_MIN and
# LAG_TARGET_MAX), never below POLLS_IN_FLIGHT_FLOOR. Past saturation that keeps what is delivered within two
# intervals of its sample. With 4,300 CDUs polled every 0.2 s (five times what the daemon sustains on two
# cores) and 1,024 polls in flight, points were delivered 0.67 / 1.13 s and 0.80 / 1.29 s (p50 / p99) after
# their samples; with the limit following a lag of 0.04 s, 0.14 / 0.30 s and 0.13 / 0.30 s, about as many
# of them. The target is no lower: 0.03 s cost a tenth of what was delivered there, and 0.04 s at 1 s
# intervals held 4,300 CDUs at 1 s (below saturation, the loop 0.05 s late now and then) to 102,100 points/s
# stored of 103,200, where 0.1 s stored them all. A loop that is not late keeps the whole cap, for devices
# that answer slowly.
LAG_TARGET_FRACTION = 0.1
LAG_TARGET_MIN = 0.04
LAG_TARGET_MAX = 0.1
POLLS_IN_FLIGHT_FLOOR = 64
# Polls of offline devices at once, in a pool of their own: a real outage of many devices (each poll a
# timeout) never holds the online ones back, and a loop so starved that every device looked offline gets
# few enough polls at once that they answer in time again.
OFFLINE_POLLS_IN_FLIGHT = 64

# A poll that starts later than this fraction of its interval after it was due has overrun its slot.
OVERRUN_FRACTION = 0.5
# The pollers sleep on shared clocks (`SlotClock`): a device's poll starts up to a slot after it is due, a
# slot being at most POLL_SLOT_SECONDS and at most POLL_SLOT_FRACTION of its interval.
POLL_SLOT_SECONDS = 0.01
POLL_SLOT_FRACTION = 0.05
# Each event loop's clocks, by slot width (a clock's slots are the timers of one loop).
_CLOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, SlotClock]] = weakref.WeakKeyDictionary()


def poll_clock(interval: float) -> SlotClock:
    """The running loop's shared clock of the devices polled every `interval` (one per slot width)."""
    slot = min(POLL_SLOT_SECONDS, interval * POLL_SLOT_FRACTION)
    loop = asyncio.get_running_loop()
    clocks = _CLOCKS.get(loop)
    if clocks is None:
        clocks = _CLOCKS[loop] = {}
    clock = clocks.get(slot)
    if clock is None:
        clock = clocks[slot] = SlotClock(slot)
    return clock


def make_driver(device: DeviceBase, profile: Profile[Any], context: DriverContext) -> Driver:
    # The device's protocol's factory, from the protocol registry.
    return registry.make_driver(device, profile, context)


def poll_deadline(device: DeviceBase) -> float:
    explicit = getattr(device, "deadline", None)
    if explicit:
        return float(explicit)
    return device.timeout * (device.retries + 1) + 0.25


class DeviceCoordinator:
    def __init__(self, device: DeviceBase, driver: Driver, pipeline: Pipeline) -> None:
        self.device = device
        self.driver = driver
        # Asked once: `Subscriber` is a runtime protocol, whose isinstance check costs about 5 us (the liveness
        # check asks for every device: 0.1 s of the event loop at each /healthz and watchdog ping of 21,500).
        self.subscribes = isinstance(driver, Subscriber)
        self.pipeline = pipeline
        self.online: bool | None = None
        self.last_error = ""
        self.last_success_ns = 0
        self.polled = asyncio.Event()  # set after the first poll, whatever its outcome
        # Monotonic time of the last completed poll (success or recorded failure), or of the coordinator's
        # creation before the first: the liveness check's proof that the poller is not stuck or dead.
        self.last_poll = time.monotonic()
        # (measurement, row tags) -> the names of the points that had a good value there: what a failed
        # poll reports BAD (a table's rows as last seen, not only the profile's scalars).
        self._last_keys: dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, None]] = {}
        # A layout whose batch's keys are all in `_last_keys` (`Layout`): its next batches add none.
        self._known_layout: Layout | None = None
        self.overruns = 0
        # Monotonic time since which the poller waits for the pipeline's admission, None when it does not.
        self.waiting_since: float | None = None
        # Monotonic time the poll in progress was let through, None between polls.
        self.polling_since: float | None = None
        self._unexpected_logged: set[str] = set()
        # Once: a device without a `deadline` field costs pydantic's slow attribute path on every lookup.
        self.deadline = poll_deadline(device)
        self._deadline = Deadline()
        # This device's series of the per-poll metrics, their keys made once.
        self._polls_ok = POLLS.child(device=device.id, result="ok")
        self._polls_error = POLLS.child(device=device.id, result="error")
        self._poll_seconds = POLL_SECONDS.child(device=device.id)
        self._online = ONLINE.child(device=device.id)

    @property
    def name(self) -> str:
        return f"device:{self.device.id}"

    async def run(self) -> None:
        try:
            if self.subscribes:
                assert isinstance(self.driver, Subscriber)
                await self.driver.subscribe(self._emit, self._set_status)
            else:
                await self._poll_loop()
        finally:
            self._deadline.close()
            await self.driver.close()

    async def _poll_loop(self) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()  # this loop's own, for the check after each poll
        interval = self.device.interval
        admission = self.pipeline.admission
        clock = poll_clock(interval)
        due = loop.time()
        while True:
            if due > loop.time():
                await clock.sleep_until(due, loop)
            # Backpressure: while the outboxes behind the pipeline are over their marks, wait in line with
            # the other devices (first come, first served), so that all of them are polled later, in turn.
            self.waiting_since = time.monotonic()
            # An offline device's poll (mostly a timeout) takes no slot of the bounded polls in flight.
            capped = self.online is not False
            try:
                await admission.acquire(capped)
            finally:
                self.waiting_since = None
            self.polling_since = time.monotonic()
            started = loop.time()
            late = started - due
            _LATENESS.observe(late)
            if late > interval * OVERRUN_FRACTION:
                # Overran (a slow poll, a busy loop or backpressure): the schedule moves on from this start,
                # so the interval stretches instead of polls following back to back to catch up.
                self.overruns += 1
                OVERRUNS.inc(device=self.device.id)
                OVERRUNS_ALL.inc()
                due = started
            try:
                await self._poll(loop, task)
            finally:
                self.polling_since = None
                admission.release(capped)
            reraise_lost_cancellation(task)  # a driver library may have swallowed our cancellation
            due += interval

    async def poll_once(self) -> Batch:
        return await self._poll(asyncio.get_running_loop(), asyncio.current_task())

    async def _poll(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any] | None) -> Batch:
        """`poll_once`, with the running loop and the current task given: the poll loop has them, and asking
        asyncio for them makes a system call (getpid) each time."""
        started = time.perf_counter()
        ts = now_ns()
        error: str | None = None
        samples: list[Sample] = []
        layout: Layout | None = None
        # The poll's deadline: `asyncio.timeout` without a timer of its own per poll (`Deadline`).
        deadline = self._deadline
        deadline.start(loop.time() + self.deadline, task)
        expired = False
        try:
            try:
                if self.online is not True:
                    await self.driver.connect()
                samples = await self.driver.read()
                # The driver's word on how they are laid out, if it gives one (`Layout`): taken at once,
                # before anything else runs that could read from the driver again.
                layout = getattr(self.driver, "last_layout", None)
            finally:
                # Whatever ended the poll, the deadline's own cancellation is taken back here (one the driver
                # swallowed too, as `asyncio.timeout` does).
                expired = deadline.stop()
        except asyncio.CancelledError:
            if not expired:
                raise  # a cancellation from elsewhere: the coordinator stops
            error = f"no answer within the poll deadline ({self.deadline:g} s)"
        except TimeoutError:
            error = f"no answer within the poll deadline ({self.deadline:g} s)"
        except DriverError as err:
            error = str(err) or type(err).__name__
        except Exception as err:
            # A driver bug or a hostile answer the decoding did not expect (an OverflowError from a
            # 200-byte INTEGER): the device is offline with the reason, polling goes on.
            error = f"unexpected error: {type(err).__name__}: {err}"[:300]
            self._log_unexpected(err)
            await self._reset_driver()
        if error is None:
            self._polls_ok.inc()
            self._poll_seconds.observe(time.perf_counter() - started)
            self._set_status(True, "")
        else:
            self._polls_error.inc()
            self._set_status(False, error)
            samples = self._bad_samples(ts, error)
            layout = None
        batch = Batch(self.device.id, self.device.kind, ts, samples, layout)
        self._emit_batch(batch)
        self.last_poll = time.monotonic()
        self.polled.set()
        return batch

    def _log_unexpected(self, err: Exception) -> None:
        key = type(err).__qualname__
        if key not in self._unexpected_logged:
            # The traceback once per kind of error: the next ones are the same bug, counted in the metrics.
            self._unexpected_logged.add(key)
            log.error("device poll raised an unexpected error", device=self.device.id, exc_info=err)

    async def _reset_driver(self) -> None:
        """After an unexpected error the driver's connection state is unknown: start the next poll afresh."""
        try:
            async with asyncio.timeout(max(1.0, self.device.timeout)):
                await self.driver.close()
        except Exception:  # a close that fails (or times out) changes nothing here
            pass

    def fail(self, err: BaseException) -> None:
        """The coordinator's task failed (supervision restarts it): offline, with a BAD batch and the reason."""
        error = f"unexpected error: {type(err).__name__}: {err}"[:300]
        ts = now_ns()
        self._set_status(False, error)
        self._polls_error.inc()
        self._emit_batch(Batch(self.device.id, self.device.kind, ts, self._bad_samples(ts, error)))
        self.last_poll = time.monotonic()
        self.polled.set()

    def stale(self, now: float | None = None) -> bool:
        """True when a polled device has not completed a poll for three intervals (or three poll deadlines,
        when the deadline is the longer): its poller is stuck or dead. A subscription has no schedule."""
        if self.subscribes:
            return False
        period = max(self.device.interval, self.deadline)
        now = time.monotonic() if now is None else now
        if self.waiting_since is not None and now - self.pipeline.admission.last_progress <= 3 * period:
            # Held back by backpressure while the queue of polls moves: polled later, not stuck.
            return False
        polling = self.polling_since
        if polling is not None and now - polling <= 3 * period:
            # Polling now, let through after that wait: its last poll may be older than three periods (an
            # offline device waits for one of the few polls of offline devices at once, each as long as a
            # timeout), but the poller moves. One that is still in this poll three periods on is stuck.
            return False
        return now - self.last_poll > 3 * period

    def _bad_samples(self, ts: int, reason: str) -> list[Sample]:
        if self._last_keys:
            return [
                Sample(self.device.id, point, None, ts, Quality.BAD, reason, measurement, tags)
                for (measurement, tags), points in self._last_keys.items() for point in points
            ]
        # Never read yet: the profile's readable scalars, each under the key its readings take (an SNMP
        # probe's constant tags included), or the BAD sample would be a series no reading makes good again.
        device = self.device.id
        return [Sample(device, point, None, ts, Quality.BAD, reason, measurement, tags)
                for point, measurement, tags in unread_keys(self.driver.profile)]

    def _emit(self, samples: list[Sample]) -> None:
        if samples:
            self._emit_batch(Batch(self.device.id, self.device.kind, samples[0].ts_ns, samples))
            self.polled.set()

    def _emit_batch(self, batch: Batch) -> None:
        layout = batch.layout
        if layout is not None and layout is self._known_layout:
            # Laid out as a batch whose keys are known already (they are never forgotten): nothing new.
            self.pipeline.publish(batch)
            return
        good, known = Quality.GOOD, self._last_keys
        measurement: str | None = None
        tags: tuple[tuple[str, str], ...] | None = None
        points: dict[str, None] = {}
        for sample in batch.samples:
            if sample.quality is good:
                if sample.measurement is not measurement or sample.tags is not tags:
                    measurement, tags = sample.measurement, sample.tags
                    found = known.get((measurement, tags))
                    if found is None:
                        found = known[(measurement, tags)] = {}
                    points = found
                points[sample.point] = None
        if layout is not None:
            self._known_layout = layout
        self.pipeline.publish(batch)

    def _set_status(self, online: bool, error: str) -> None:
        self._online.set(1.0 if online else 0.0)
        if online:
            self.last_success_ns = now_ns()
        if online == self.online and (online or error == self.last_error):
            return
        if online:
            if self.online is False:
                log.info("device recovered", device=self.device.id)
        else:
            # Logged once per outage (and again only if the error changes).
            log.warning("device unavailable", device=self.device.id, error=error)
        self.online = online
        self.last_error = error
        self.pipeline.status(DeviceStatus(self.device.id, self.device.kind, online, now_ns(), error))

    async def write(self, point: str, value: Value) -> None:
        await self.driver.write(point, value)
        log.info("write", device=self.device.id, point=point, value=value)


UnreadKeys = tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...]
_UNREAD: ByProfile[UnreadKeys] = ByProfile()


def unread_keys(profile: Any) -> UnreadKeys:
    """(point, measurement, tags) of each readable scalar of the profile: the BAD samples of a device whose
    polls fail before it was ever read. Worked out once per profile, not at every failed poll: with the whole
    hall unreachable at a start that was most of the daemon's CPU (a pydantic attribute lookup that raises,
    three per point, for every device every time)."""
    return _UNREAD.get(profile, lambda: tuple(
        (p.name, profile.measurement(p), tuple(sorted((getattr(p, "tags", None) or {}).items())))
        for p in profile.points if not getattr(p, "index_tag", None) and getattr(p, "readable", True)))


def lag_target(intervals: Iterable[float]) -> float:
    """The event loop lag above which fewer polls run at once: a fraction of the shortest poll interval."""
    shortest = min(intervals, default=LAG_TARGET_MAX / LAG_TARGET_FRACTION)
    return min(LAG_TARGET_MAX, max(LAG_TARGET_MIN, LAG_TARGET_FRACTION * shortest))


def wire_backpressure(pipeline: Pipeline, publisher: MqttPublisher | None, ingest: Ingest | None) -> None:
    """The outboxes after the pipeline hold the pollers back when they fill faster than they drain, and the
    polls in flight are fewer while the event loop runs late (above the admission's `lag_target`, which the
    daemon sets from its devices' intervals with `lag_target`)."""
    pipeline.admission.max_in_flight = POLLS_IN_FLIGHT
    pipeline.admission.min_in_flight = POLLS_IN_FLIGHT_FLOOR
    pipeline.admission.max_offline_in_flight = OFFLINE_POLLS_IN_FLIGHT
    if publisher is not None:
        box, connected = publisher.outbox, publisher.connected
        subscribed = ingest.subscribed if ingest is not None else None
        # Down while the broker is not connected, or the in-process ingest not subscribed (the publisher
        # waits for it): an outage the outbox buffers, not a slow hop.
        pipeline.admission.add_backlog(
            "mqtt", lambda: box.depth, lambda: PUBLISHED.get(), high=MQTT_BACKLOG_HIGH,
            alive=lambda: connected.is_set() and (subscribed is None or subscribed.is_set()))
    if ingest is not None:
        ingest_box = ingest.outbox
        # What was queued minus what waits: what left (written, or refused and dropped), in outbox items as
        # the depth is. No flag says when the database is down: nothing leaving for INGEST_STALL_SECONDS is
        # taken as an outage.
        pipeline.admission.add_backlog("ingest", lambda: ingest_box.depth,
                                       lambda: ingest.queued - ingest_box.depth, high=INGEST_BACKLOG_HIGH,
                                       stall_after=INGEST_STALL_SECONDS)


LAG_PERIOD = 0.1
LOOP_LAG = REGISTRY.gauge("dcim_event_loop_lag_seconds",
                          "How late the event loop ran a timer at the last check (above about 0.05 s: out of CPU)")


async def watch_loop_lag(period: float = LAG_PERIOD, admission: Admission | None = None) -> None:
    """How late a timer runs: a daemon past saturation shows it here before anywhere else. Each sample also
    goes to `admission`, whose limit on polls in flight follows it."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(period)
        lag = max(0.0, loop.time() - start - period)
        LOOP_LAG.set(lag)
        if admission is not None:
            admission.follow_lag(lag)


def polling_summary(coordinators: Iterable[DeviceCoordinator], pipeline: Pipeline) -> dict[str, Any]:
    """For /healthz: overruns in total and the devices with the most, and what backpressure holds now.
    Overruns alone do not make the daemon unhealthy: past saturation every device is polled later."""
    counts = sorted(((c.overruns, c.device.id) for c in coordinators if c.overruns), reverse=True)
    return {
        "overruns_total": sum(n for n, _ in counts),
        "devices_with_overruns": len(counts),
        "most_overruns": {device: n for n, device in counts[:5]},
        "admission": pipeline.admission.summary(),
    }
