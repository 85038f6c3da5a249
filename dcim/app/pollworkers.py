"""Poll workers (`workers:`): the protocol work of polling on other cores, the rest of the daemon unchanged.

With `workers: N` (or `auto`: one per usable CPU but the daemon's own), `dcim run` starts N processes
(`python -m dcim.app.pollworker`, dcim/app/pollworker.py), each on a socket pair of its own. Every polled
device is given to one of them: rendezvous hashing of the device's connection (`host:port`, so the devices
behind one Modbus gateway share the worker and its one connection) over the workers. In the daemon such a
device's coordinator gets a `RemoteDriver`: its reads and writes are requests to the worker, which runs the
real driver and answers with the samples' rows. Schedules, deadlines, the admission of polls, the rules
(which still see every sample first), MQTT, the ingest, alarms, writes through the guard and the HTTP API
stay in the daemon. Subscriptions (OPC UA monitored items) stay in the daemon too.

A worker that exits (a crash, kill -9, an OOM kill) fails the requests it had (its devices' polls fail:
offline, BAD samples, as for a device that stopped answering) and is started again with capped backoff,
each restart counted (`dcim_poll_worker_restarts_total`) and shown in /healthz; its devices' drivers are
made again there on their next poll. The workers' own metrics (the drivers': requests, retries, connection
state) are sent to the daemon every two seconds and rendered in its /metrics; their counters carry over a
worker's restart. At shutdown the daemon stops its pollers, then closes the sockets: each worker closes its
drivers and exits (SIGKILL past STOP_SECONDS).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import socket
import sys
import time
from collections.abc import Iterable
from itertools import count as counter
from pathlib import Path
from typing import Any

import structlog

from dcim.app.cluster.shards import owner
from dcim.app.ingest_workers import die_with_parent, kill
from dcim.app.pollworker import (
    ANSWER,
    CANCEL,
    CLOSE,
    CONNECT,
    FAIL,
    METRICS,
    OPEN,
    READ,
    READY,
    WRITE,
    Framed,
    fingerprint,
)
from dcim.core.backoff import Backoff
from dcim.core.metrics import REGISTRY, Snapshot
from dcim.core.samples import Quality, Sample, Value
from dcim.drivers import errors
from dcim.drivers.base import DeviceBase, Driver
from dcim.drivers.errors import DeviceUnreachable, DriverError
from dcim.drivers.profiles import Profile

log = structlog.get_logger(__name__)

RESTARTS = REGISTRY.counter("dcim_poll_worker_restarts_total", "Poll worker processes started again after they "
                            "exited", ("worker",))
RUNNING = REGISTRY.gauge("dcim_poll_workers_running", "Poll worker processes running and connected")

# From the start of a worker to its READY: imports, plugins.
START_SECONDS = 60.0
STOP_SECONDS = 15.0
# A worker that sends nothing for this long (its metrics come every two seconds) is taken for hung and killed.
HUNG_SECONDS = 30.0
QUALITY = {q.value: q for q in Quality}
ERRORS: dict[str, type[DriverError]] = {
    name: cls for name, cls in vars(errors).items() if isinstance(cls, type) and issubclass(cls, DriverError)}


def worker_count(setting: int | str, cpus: int | None = None) -> int:
    """`workers:` as a number of processes: `auto` is one per CPU this process may run on, less the daemon's
    own (none on one CPU)."""
    if setting == "auto":
        if cpus is None:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(cpus - 1, 0)
    return int(setting)


def connection_key(device: DeviceBase) -> str:
    """What a worker must hold together: a device's connection (a gateway's devices share one)."""
    port = getattr(device, "port", None)
    return f"{device.host}:{port}" if port is not None else f"device:{device.id}"


def worker_of(device: DeviceBase, workers: int) -> int:
    """The worker (0..workers-1) that polls `device`: rendezvous hashing, so a worker count that changes
    moves only the devices it must."""
    name = owner(connection_key(device), [f"worker-{k}" for k in range(workers)])
    assert name is not None
    return int(name.rsplit("-", 1)[1])


class WorkerProcess:
    """One worker: its process, its socket, the requests waiting for an answer."""

    def __init__(self, index: int, log_level: str, log_format: str) -> None:
        self.index = index
        self.log_level = log_level
        self.log_format = log_format
        self.channel: Framed | None = None
        # Bumped at every start: a RemoteDriver opened on an older one opens its device again.
        self.generation = 0
        self.pid: int | None = None
        self.restarts = 0
        self.last_exit: str | None = None
        self.snapshot: Snapshot = {}
        self.carried: Snapshot = {}  # the counters of the worker's earlier lives
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._seq = counter(1)
        self.heard = time.monotonic()  # the last message from the worker
        self.ready = asyncio.Event()
        self._lost = asyncio.Event()

    @property
    def up(self) -> bool:
        return self.channel is not None and self.channel.open and self.ready.is_set()

    def command(self, fd: int) -> list[str]:
        return [sys.executable, "-m", "dcim.app.pollworker", "--fd", str(fd), "--worker", str(self.index),
                "--log-level", self.log_level, "--log-format", self.log_format]

    # ---- requests ---------------------------------------------------------------------------------

    def post(self, message: tuple[Any, ...]) -> None:
        if self.channel is not None:
            self.channel.send(message)

    async def call(self, op: int, device: str, *args: Any) -> Any:
        if not self.up:
            raise DeviceUnreachable(f"poll worker {self.index} is not running" +
                                    (f" (last exit: {self.last_exit})" if self.last_exit else ""))
        assert self.channel is not None
        seq = next(self._seq)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[seq] = future
        self.channel.send((op, seq, device, *args))
        try:
            return await future
        except asyncio.CancelledError:
            if self._pending.pop(seq, None) is not None:
                self.post((CANCEL, seq, ""))  # the poll's deadline: the worker stops the request too
            raise
        finally:
            self._pending.pop(seq, None)

    def _on_message(self, message: tuple[Any, ...]) -> None:
        self.heard = time.monotonic()
        kind, seq = message[0], message[1]
        if kind == ANSWER or kind == FAIL:
            future = self._pending.pop(seq, None)
            if future is None or future.done():
                return  # given up on (the poll's deadline passed)
            if kind == ANSWER:
                future.set_result(message[2])
            else:
                future.set_exception(_error(self.index, message[2], message[3]))
        elif kind == METRICS:
            self.snapshot = _checked(message[2])  # rendered in /metrics: a bad one must fail here, not there
        elif kind == READY:
            self.ready.set()

    def _on_lost(self, exc: BaseException | None) -> None:
        self._lost.set()
        self._fail_pending()

    def _fail_pending(self) -> None:
        pending, self._pending = self._pending, {}
        error = DeviceUnreachable(f"poll worker {self.index} exited")
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    # ---- the process ------------------------------------------------------------------------------

    async def keep(self) -> None:
        """Run the worker, and start it again whenever it exits."""
        backoff = Backoff(initial=0.5, maximum=30.0)
        while True:
            started = time.monotonic()
            self.last_exit = await self._run_once()
            if time.monotonic() - started > 60:
                backoff.reset()  # it ran a while: not a crash loop
            delay = backoff.next()
            log.warning("poll worker exited; starting it again (its devices' polls fail meanwhile)",
                        worker=self.index, how=self.last_exit, restart_in=round(delay, 2))
            RESTARTS.inc(worker=str(self.index))
            self.restarts += 1
            await asyncio.sleep(delay)

    async def _run_once(self) -> str:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        loop = asyncio.get_running_loop()
        self.ready.clear()
        self._lost.clear()
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command(theirs.fileno()), stdin=asyncio.subprocess.DEVNULL, pass_fds=(theirs.fileno(),),
                start_new_session=True, preexec_fn=die_with_parent)
        finally:
            theirs.close()
        self.pid = process.pid
        channel = Framed(self._on_message, self._on_lost)
        try:
            await loop.create_connection(lambda: channel, sock=ours)
            self.channel = channel
            ready = asyncio.ensure_future(self.ready.wait())
            lost = asyncio.ensure_future(self._lost.wait())
            exited = asyncio.ensure_future(process.wait())
            try:
                await asyncio.wait((ready, lost, exited), timeout=START_SECONDS, return_when=asyncio.FIRST_COMPLETED)
            finally:
                ready.cancel()
                lost.cancel()
            if self.up:
                self.generation += 1
                _count_running()
                log.info("poll worker ready", worker=self.index, pid=process.pid)
                lost = asyncio.ensure_future(self._lost.wait())
                watch = asyncio.ensure_future(self._watch(process))
                try:
                    await asyncio.wait((lost, exited, watch), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    lost.cancel()
                    watch.cancel()
            elif not exited.done():
                log.error("poll worker did not start in time", worker=self.index, seconds=START_SECONDS)
            self._retire(channel)
            code = await self._stop(process)
            exited.cancel()
            return f"exit {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        except BaseException:
            self._retire(channel)
            await self._stop(process)
            raise
        finally:
            self.pid = None
            _count_running()

    async def _watch(self, process: asyncio.subprocess.Process) -> None:
        """A worker alive but silent (stopped, or stuck in a call that never returns) answers nothing, and the
        requests for it pile up in the daemon: past HUNG_SECONDS without a word (its metrics come every two
        seconds) it is killed, and started again like a worker that died."""
        self.heard = time.monotonic()
        while True:
            await asyncio.sleep(HUNG_SECONDS / 4)
            silent = time.monotonic() - self.heard
            if silent > HUNG_SECONDS:
                log.error("poll worker silent: killed, to be started again", worker=self.index, pid=process.pid,
                          silent_s=round(silent, 1))
                kill(process)
                return

    def _retire(self, channel: Framed) -> None:
        """The worker's life is over: its requests fail, its counters carry over to the next one."""
        self.channel = None
        self.ready.clear()
        if channel.transport is not None:
            channel.transport.close()
        self._fail_pending()
        for name, (kind, help_text, labels, values, counts) in self.snapshot.items():
            if kind == "gauge":
                continue  # a gauge says how things are now: the next life tells its own
            got = self.carried.setdefault(name, (kind, help_text, labels, {}, {}))
            for key, value in values.items():
                got[3][key] = got[3].get(key, 0) + value
            for key, n in counts.items():
                got[4][key] = got[4].get(key, 0) + n
        self.snapshot = {}

    async def _stop(self, process: asyncio.subprocess.Process) -> int:
        """The socket is closed: the worker closes its drivers and exits; SIGKILL past STOP_SECONDS."""
        if process.returncode is None:
            try:
                await asyncio.shield(asyncio.wait_for(process.wait(), STOP_SECONDS))
            except (TimeoutError, asyncio.CancelledError):
                kill(process)
                with contextlib.suppress(Exception):
                    await asyncio.shield(asyncio.wait_for(process.wait(), 5))
        return process.returncode if process.returncode is not None else -signal.SIGKILL.value

    def status(self) -> dict[str, Any]:
        return {"pid": self.pid, "up": self.up, "restarts": self.restarts, "last_exit": self.last_exit}


_ALL: list[PollWorkers] = []


def _count_running() -> None:
    RUNNING.set(sum(1 for pool in _ALL for w in pool.workers if w.up))


def _checked(snapshot: Any) -> Snapshot:
    """A worker's snapshot, if it has the shape `Registry.render` reads; ValueError if not."""
    if not isinstance(snapshot, dict):
        raise ValueError("a snapshot is a dict")
    for name, family in snapshot.items():
        if not (isinstance(name, str) and isinstance(family, tuple) and len(family) == 5
                and isinstance(family[0], str) and isinstance(family[1], str) and isinstance(family[2], tuple)
                and isinstance(family[3], dict) and isinstance(family[4], dict)):
            raise ValueError(f"metric family {str(name)[:60]} is not (kind, help, labels, values, counts)")
        if not all(isinstance(k, tuple) and len(k) == len(family[2]) and all(isinstance(x, str) for x in k)
                   and isinstance(v, int | float) for k, v in family[3].items()):
            raise ValueError(f"metric family {name[:60]}: a series that does not match its labels")
    return snapshot


def _error(worker: int, kind: str, message: str) -> BaseException:
    if kind == "CancelledError":
        return DriverError(f"poll worker {worker}: request cancelled")
    cls = ERRORS.get(kind)
    if cls is not None:
        return cls(message)
    # What the driver raised beyond its own errors: the poller reports it as unexpected, as in one process.
    return RuntimeError(message)


class PollWorkers:
    """The daemon's poll workers: started and kept by `run`, each device's `RemoteDriver` made by `remote`."""

    def __init__(self, count: int, *, log_level: str = "info", log_format: str = "auto") -> None:
        self.workers = [WorkerProcess(k, log_level, log_format) for k in range(count)]
        _ALL.append(self)
        REGISTRY.add_remote(self.snapshots)

    def snapshots(self) -> Iterable[Snapshot]:
        for worker in self.workers:
            yield worker.carried
            yield worker.snapshot

    def remote(self, device: DeviceBase, profile: Profile[Any], profile_dirs: tuple[Path, ...]) -> RemoteDriver:
        worker = self.workers[worker_of(device, len(self.workers))]
        return RemoteDriver(device, profile, worker, tuple(str(p) for p in profile_dirs))

    async def started(self) -> None:
        """Until every worker is up (the caller bounds the wait: one that is not fails its devices' polls)."""
        for worker in self.workers:
            await worker.ready.wait()

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                for worker in self.workers:
                    tg.create_task(worker.keep(), name=f"poll-worker-{worker.index}")
        finally:
            _count_running()

    def close(self) -> None:
        """After `run`: the workers' series and count leave the process' metrics."""
        with contextlib.suppress(ValueError):
            _ALL.remove(self)
        REGISTRY.remove_remote(self.snapshots)
        _count_running()

    def status(self, drivers: Iterable[Driver] = ()) -> dict[str, Any]:
        devices = dict.fromkeys(range(len(self.workers)), 0)
        for driver in drivers:
            if isinstance(driver, RemoteDriver):
                devices[driver.worker.index] += 1
        return {"count": len(self.workers), "running": sum(1 for w in self.workers if w.up),
                "workers": {str(w.index): {**w.status(), "devices": devices[w.index]} for w in self.workers}}


class RemoteDriver(Driver):
    """A device's driver in a poll worker: the same calls, sent there. The profile is the daemon's own copy
    (the write guard and the BAD samples of a failed poll read it here)."""

    def __init__(self, device: DeviceBase, profile: Profile[Any], worker: WorkerProcess,
                 profile_dirs: tuple[str, ...]) -> None:
        super().__init__(device, profile)
        self.worker = worker
        # The device as it is, secrets included (a JSON dump would mask SNMPv3 keys and OPC UA passwords):
        # pickled for the worker, which only ever unpickles what its own daemon sends on its socket pair.
        self._device = pickle.dumps(device, protocol=pickle.HIGHEST_PROTOCOL)
        self._fingerprint = fingerprint(profile)
        self._profile_dirs = profile_dirs
        self._generation = -1  # the worker's life it was opened in

    def _open(self) -> None:
        worker = self.worker
        if self._generation != worker.generation and worker.up:
            worker.post((OPEN, 0, self.device.id, self._device, self._profile_dirs, self._fingerprint))
            self._generation = worker.generation

    async def connect(self) -> None:
        self._open()
        await self.worker.call(CONNECT, self.device.id)

    async def read(self) -> list[Sample]:
        self._open()
        device = self.device.id
        quality = QUALITY
        return [Sample(device, point, value, ts, quality[q], reason, measurement, tags)
                for point, value, ts, q, reason, measurement, tags in await self.worker.call(READ, device)]

    async def write(self, point: str, value: Value) -> None:
        self._open()
        await self.worker.call(WRITE, self.device.id, point, value)

    async def close(self) -> None:
        opened, self._generation = self._generation, -1  # the next request makes the driver again there
        if opened != self.worker.generation or not self.worker.up:
            return  # not opened in this life of the worker: nothing to close there
        with contextlib.suppress(Exception):
            async with asyncio.timeout(max(2.0, self.device.timeout)):
                await self.worker.call(CLOSE, self.device.id)
