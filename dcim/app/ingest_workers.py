"""Ingest worker processes started by `dcim run` (`ingest.workers: N`).

Each worker is `dcim ingest --worker K` on the same configuration file: a process of its own (so the ingest
uses other cores than the daemon's), in the MQTT 5 shared-subscription group `ingest.group`, so the broker
splits the messages between the workers of every node. A worker has its own state directory
(state_dir/ingest-workers/K: its outbox and its lock) and no HTTP API; its client id follows from that
directory, so it is stable across restarts and the broker keeps its session while it is away.

The daemon supervises them: a worker that exits (a crash, kill -9, an OOM kill) is started again with capped
backoff, each restart counted (`dcim_ingest_worker_restarts_total`) and shown in `/healthz`. Their output
(the workers' log lines) is passed through to the daemon's stderr, the journal under systemd. The daemon's
publisher waits for every worker to say it is subscribed before it sends anything (the worker's "ingest
subscribed" line), and again while one says it lost the broker, as it waits for the in-process ingest: what
is published before anyone subscribed to the group would reach no ingest. At shutdown the workers get
SIGTERM (they drain their outboxes to the database, as `dcim ingest` does) and SIGKILL only past the drain
time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import structlog

from dcim.core.backoff import Backoff
from dcim.core.metrics import REGISTRY

log = structlog.get_logger(__name__)

RESTARTS = REGISTRY.counter("dcim_ingest_worker_restarts_total", "Ingest worker processes started again after "
                            "they exited", ("worker",))
RUNNING = REGISTRY.gauge("dcim_ingest_workers_running", "Ingest worker processes running")

# The worker's own log lines (dcim.app.ingest) that say it is subscribed to the group, or lost the broker.
SUBSCRIBED_MARK = b"ingest subscribed"
UNSUBSCRIBED_MARK = b"ingest: broker unavailable"
# A worker's shutdown: its outbox drained to the database (dcim ingest's own drain budget) and a margin.
STOP_SECONDS = 40.0


def worker_state_dir(state_dir: Path | str, worker: int) -> Path:
    return Path(state_dir) / "ingest-workers" / str(worker)


def die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the daemon dies, however it dies (kill -9 included), so a
    worker never outlives the daemon that started it and holds its state directory against the next one."""
    PR_SET_PDEATHSIG = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def kill(process: asyncio.subprocess.Process) -> None:
    """SIGKILL to a worker started in a session of its own: its process group, and the process itself."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        process.kill()


class IngestWorkers:
    def __init__(self, config_path: str | Path, count: int, *, stop_seconds: float = STOP_SECONDS) -> None:
        self.config_path = str(config_path)
        self.count = count
        self.stop_seconds = stop_seconds
        self.pids: dict[int, int | None] = dict.fromkeys(range(count))
        self.restarts: dict[int, int] = dict.fromkeys(range(count), 0)
        self.last_exit: dict[int, str] = {}
        self._subscribed: dict[int, bool] = dict.fromkeys(range(count), False)
        # Set while every worker says it is subscribed (the publisher's gate), cleared while one says it lost
        # the broker: after a broker restart that lost the sessions, what is published before the workers are
        # back would reach no ingest. A worker that exits leaves it as it was: its broker session (not clean,
        # with an expiry) keeps what arrives until it is back.
        self.subscribed = asyncio.Event()

    def command(self, worker: int) -> list[str]:
        return [sys.executable, "-m", "dcim.app.cli", "ingest", "-c", self.config_path, "--worker", str(worker)]

    async def run(self) -> None:
        RUNNING.set(0)
        async with asyncio.TaskGroup() as tg:
            for worker in range(self.count):
                tg.create_task(self._keep(worker), name=f"ingest-worker-{worker}")

    def _mark(self, worker: int, subscribed: bool) -> None:
        self._subscribed[worker] = subscribed
        if all(self._subscribed.values()):
            if not self.subscribed.is_set():
                log.info("ingest workers subscribed", workers=self.count)
            self.subscribed.set()
        else:
            self.subscribed.clear()

    async def _keep(self, worker: int) -> None:
        backoff = Backoff(initial=0.5, maximum=30.0)
        while True:
            started = time.monotonic()
            code = await self._run_once(worker)
            self.last_exit[worker] = f"exit {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
            if time.monotonic() - started > 60:
                backoff.reset()  # it ran a while: not a crash loop
            delay = backoff.next()
            log.warning("ingest worker exited; starting it again", worker=worker, how=self.last_exit[worker],
                        restart_in=round(delay, 2))
            RESTARTS.inc(worker=str(worker))
            self.restarts[worker] += 1
            await asyncio.sleep(delay)

    async def _run_once(self, worker: int) -> int:
        process = await asyncio.create_subprocess_exec(
            *self.command(worker), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent)
        self.pids[worker] = process.pid
        self._count_running()
        log.info("ingest worker started", worker=worker, pid=process.pid)
        try:
            assert process.stdout is not None
            await self._relay(worker, process.stdout)
            return await process.wait()
        except BaseException:
            await self._stop(process)
            raise
        finally:
            self.pids[worker] = None
            self._count_running()

    def _count_running(self) -> None:
        RUNNING.set(sum(1 for pid in self.pids.values() if pid is not None))

    async def _relay(self, worker: int, stream: asyncio.StreamReader) -> None:
        """The worker's output, line by line, to our stderr (the journal); its "subscribed" line noted."""
        out = sys.stderr.buffer
        while True:
            try:
                line = await stream.readuntil(b"\n")
            except asyncio.IncompleteReadError as end:
                line = end.partial
            except asyncio.LimitOverrunError as over:
                line = await stream.read(over.consumed)  # a line past the 64 KiB buffer: passed on in pieces
            if not line:
                return
            if SUBSCRIBED_MARK in line:
                self._mark(worker, True)
            elif UNSUBSCRIBED_MARK in line:
                self._mark(worker, False)
            with contextlib.suppress(OSError, ValueError):
                out.write(line if line.endswith(b"\n") else line + b"\n")
                out.flush()

    async def _stop(self, process: asyncio.subprocess.Process) -> None:
        """SIGTERM (the worker drains its outbox to the database), SIGKILL past the stop budget."""
        if process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.shield(asyncio.wait_for(process.wait(), self.stop_seconds))
        except (TimeoutError, asyncio.CancelledError):
            kill(process)

    def status(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "subscribed": self.subscribed.is_set(),
            "workers": {str(k): {"pid": self.pids[k], "restarts": self.restarts[k],
                                 "last_exit": self.last_exit.get(k)} for k in range(self.count)},
        }
