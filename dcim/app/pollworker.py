"""A poll worker process (`workers:`): it holds the drivers of some of the daemon's devices and runs their
reads and writes when the daemon asks, on a socket pair the daemon made.

The daemon keeps everything else (schedules, deadlines, admission, rules, publishing, ingest, alarms, the
HTTP API): each of its devices polled here has a `RemoteDriver` (dcim/app/pollworkers.py) that sends the
read over the socket and turns the rows back into samples. So a poll's protocol work (sockets, framing,
decoding) runs on another core, and the rules still see every sample first, in the daemon.

Frames, both ways: a 4-byte big-endian length, then a `marshal`ed tuple (the two ends are one build of
dcim, started together). Several frames written in one loop iteration leave in one `send`.

    daemon -> worker   (OPEN, 0, device, pickled device model, profile dirs, profile fingerprint)
                                                                        the device's driver, made here (again)
                       (CONNECT | READ | CLOSE, seq, device)
                       (WRITE, seq, device, point, value)
                       (CANCEL, seq, "")                                the request's deadline passed
    worker -> daemon   (READY, 0, pid)
                       (ANSWER, seq, result)                            READ: rows, see `rows`
                       (FAIL, seq, error class name, message)
                       (METRICS, 0, registry snapshot)                  every METRICS_SECONDS (the
                                                                        heartbeat: a worker silent for
                                                                        HUNG_SECONDS is killed)

The worker ends when its socket closes (the daemon stopped or died), after closing its drivers. It ignores
SIGINT (a terminal's Ctrl-C reaches the daemon, which stops it) and stops on SIGTERM.

    python -m dcim.app.pollworker --fd 3 --worker 1 [--log-level info] [--log-format auto]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import marshal
import os
import pickle
import signal
import socket
import struct
from collections.abc import Callable
from typing import Any

import structlog

OPEN, CONNECT, READ, WRITE, CLOSE, CANCEL = 1, 2, 3, 4, 5, 6
READY, ANSWER, FAIL, METRICS = 11, 12, 13, 14
HEADER = struct.Struct(">I")
# A frame longer than this is not ours: the stream is out of step and the connection is closed. The largest
# frames are metrics snapshots (tens of bytes a series).
MAX_FRAME = 64 * 1024 * 1024
METRICS_SECONDS = 2.0
# A snapshot is skipped while this much of what the worker wrote is still unsent (a daemon too busy to read).
METRICS_BACKLOG_BYTES = 4 * 1024 * 1024

log = structlog.get_logger(__name__)


def frame(message: tuple[Any, ...]) -> bytes:
    body = marshal.dumps(message)
    return HEADER.pack(len(body)) + body


class FrameError(Exception):
    """The peer sent something that is not a frame of this protocol."""


class Framed(asyncio.Protocol):
    """Both ends' framing: frames written in one loop iteration go in one write; each frame received goes to
    `on_message`. A bad frame closes the connection (`on_lost` with the reason)."""

    def __init__(self, on_message: Callable[[tuple[Any, ...]], None],
                 on_lost: Callable[[BaseException | None], None]) -> None:
        self.on_message = on_message
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._flush_scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._out.clear()
        self.on_lost(exc)

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def send(self, message: tuple[Any, ...]) -> None:
        if self.transport is None:
            return
        self._out.append(frame(message))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def backlog(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        end = len(buffer)
        try:
            while end - start >= 4:
                (size,) = HEADER.unpack_from(buffer, start)
                if size > MAX_FRAME:
                    raise FrameError(f"frame of {size} bytes (at most {MAX_FRAME})")
                if end - start - 4 < size:
                    break
                try:
                    message = marshal.loads(memoryview(buffer)[start + 4:start + 4 + size])
                except (ValueError, EOFError, TypeError) as err:
                    raise FrameError(f"undecodable frame: {err}") from None
                if not isinstance(message, tuple) or len(message) < 2:
                    raise FrameError(f"frame of type {type(message).__name__}, not a message")
                start += 4 + size
                try:
                    self.on_message(message)
                except (IndexError, TypeError, ValueError, KeyError) as err:
                    # A message of the right framing but not of the protocol's shape (a field missing, a
                    # snapshot that is not one): the peer is not to be trusted further, as for a bad frame.
                    raise FrameError(f"malformed message {str(message)[:80]}: {type(err).__name__}: {err}") from None
        except FrameError as err:
            buffer.clear()
            if self.transport is not None:
                self.transport.close()
            self.on_lost(err)
            return
        if start:
            del buffer[:start]


_FINGERPRINTS: dict[int, tuple[Any, str]] = {}


def fingerprint(profile: Any) -> str:
    """A profile's digest (its whole model), once per profile object: the daemon and a worker compare theirs."""
    got = _FINGERPRINTS.get(id(profile))
    if got is None or got[0] is not profile:
        if len(_FINGERPRINTS) > 1024:  # profiles are few; objects of earlier reloads are let go
            _FINGERPRINTS.clear()
        digest = hashlib.sha256(profile.model_dump_json().encode()).hexdigest()[:32]
        got = _FINGERPRINTS[id(profile)] = (profile, digest)
    return got[1]


def rows(samples: list[Any]) -> list[tuple[Any, ...]]:
    """A read's samples as the rows of an ANSWER: (point, value, ts_ns, quality, reason, measurement, tags)."""
    return [(s.point, s.value, s.ts_ns, s.quality.value, s.reason, s.measurement, s.tags) for s in samples]


class Worker:
    """The worker's side: the drivers of the devices the daemon opened here, and the requests running."""

    def __init__(self, worker: int) -> None:
        from dcim.drivers.base import DriverContext

        self.worker = worker
        self.context = DriverContext()
        self.drivers: dict[str, Any] = {}
        self.broken: dict[str, str] = {}  # device -> why its driver could not be made
        self.running: dict[int, asyncio.Task[Any]] = {}
        self.unexpected: set[str] = set()
        self.closing: set[asyncio.Future[None]] = set()  # drivers replaced by a new OPEN, being closed
        self.done = asyncio.Event()
        self.channel = Framed(self._on_message, self._on_lost)

    def _on_lost(self, exc: BaseException | None) -> None:
        if exc is not None:
            log.error("poll worker: connection to the daemon broken", worker=self.worker, error=str(exc))
        self.done.set()

    def _on_message(self, message: tuple[Any, ...]) -> None:
        op, seq = message[0], message[1]
        if op == OPEN:
            self._open(message[2], message[3], message[4], message[5])
        elif op == CANCEL:
            task = self.running.get(seq)
            if task is not None:
                task.cancel()
        elif op in (CONNECT, READ, WRITE, CLOSE):
            task = asyncio.ensure_future(self._request(op, seq, message))
            self.running[seq] = task
        else:
            log.error("poll worker: unknown request", worker=self.worker, op=op)

    def _open(self, device_id: str, device_blob: bytes, profile_dirs: tuple[str, ...], expected: str) -> None:
        from pathlib import Path

        from dcim.drivers import registry
        from dcim.drivers.profiles import load_profile

        old = self.drivers.pop(device_id, None)
        if old is not None:
            closing = asyncio.ensure_future(self._close(old))
            self.closing.add(closing)
            closing.add_done_callback(self.closing.discard)
        self.broken.pop(device_id, None)
        try:
            # From this worker's own daemon, on the socket pair it made (nothing else can write there).
            device = pickle.loads(device_blob)
            profile = load_profile(device.profile, tuple(Path(p) for p in profile_dirs))
            if fingerprint(profile) != expected:
                # The daemon's guard checks writes against its copy: the driver must encode with the same map.
                raise ValueError(f"profile {device.profile} on disk differs from the one the daemon loaded at its "
                                 f"start (edited since?): restart the daemon to use it")
            self.drivers[device_id] = registry.make_driver(device, profile, self.context)
        except Exception as err:
            self.broken[device_id] = f"poll worker {self.worker} cannot make the driver: {type(err).__name__}: {err}"
            log.error("poll worker: cannot make a driver", worker=self.worker, device=device_id, error=str(err))

    async def _close(self, driver: Any) -> None:
        with contextlib.suppress(Exception):
            await driver.close()

    async def _request(self, op: int, seq: int, message: tuple[Any, ...]) -> None:
        from dcim.drivers.errors import DriverError

        device_id = message[2]
        try:
            if op == CLOSE:
                # Closed for good: the daemon's next request for the device opens it again (a reset after
                # an unexpected error, or a device removed by a reload, whose driver is not kept here).
                closing = self.drivers.pop(device_id, None)
                if closing is not None:
                    await closing.close()
                self.channel.send((ANSWER, seq, None))
                return
            driver = self.drivers.get(device_id)
            if driver is None:
                raise DriverError(self.broken.get(device_id) or f"{device_id} is not open in poll worker {self.worker}")
            if op == READ:
                result: Any = rows(await driver.read())
            elif op == CONNECT:
                await driver.connect()
                result = None
            else:
                await driver.write(message[3], message[4])
                result = None
            self.channel.send((ANSWER, seq, result))
        except asyncio.CancelledError:
            if self.done.is_set():
                raise
            self.channel.send((FAIL, seq, "CancelledError", "cancelled"))
        except DriverError as err:
            self.channel.send((FAIL, seq, type(err).__name__, str(err)))
        except Exception as err:
            # What the daemon's poller would have caught in its own process: sent as an unexpected error,
            # its traceback logged here once per kind of error.
            if type(err).__qualname__ not in self.unexpected:
                self.unexpected.add(type(err).__qualname__)
                log.error("driver raised an unexpected error", worker=self.worker, device=device_id, exc_info=err)
            self.channel.send((FAIL, seq, "unexpected", f"{type(err).__name__}: {err}"[:500]))
        finally:
            self.running.pop(seq, None)

    async def _metrics(self) -> None:
        from dcim.core.metrics import REGISTRY

        failed = False
        while True:
            await asyncio.sleep(METRICS_SECONDS)
            if self.channel.backlog() < METRICS_BACKLOG_BYTES:
                # Also the worker's heartbeat: the daemon kills a worker it has not heard from for a while.
                try:
                    snapshot = REGISTRY.snapshot()
                except Exception:
                    if not failed:
                        log.exception("poll worker: metrics snapshot failed", worker=self.worker)
                    failed, snapshot = True, {}
                self.channel.send((METRICS, 0, snapshot))

    async def run(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self.channel, sock=sock)
        loop.add_signal_handler(signal.SIGTERM, self.done.set)
        self.channel.send((READY, 0, os.getpid()))
        metrics = asyncio.ensure_future(self._metrics())
        try:
            await self.done.wait()
        finally:
            metrics.cancel()
            for task in list(self.running.values()):
                task.cancel()
            await asyncio.gather(metrics, *self.running.values(), return_exceptions=True)
            closing = [self._close(d) for d in self.drivers.values()]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await asyncio.gather(*closing, return_exceptions=True)
            if self.channel.transport is not None:
                self.channel.transport.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dcim.app.pollworker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fd", type=int, required=True, help="the worker's end of the daemon's socket pair")
    parser.add_argument("--worker", type=int, required=True)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", default="auto")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    from dcim.core.collector import settle as settle_collector
    from dcim.core.logs import setup_logging

    setup_logging(args.log_level, args.log_format)
    structlog.contextvars.bind_contextvars(worker=args.worker)
    sock = socket.socket(fileno=args.fd)
    worker = Worker(args.worker)
    from dcim.drivers import registry

    registry.PROTOCOLS.load_plugins()
    settle_collector()
    log.info("poll worker started", worker=args.worker, pid=os.getpid())
    asyncio.run(worker.run(sock))
    log.info("poll worker stopped", worker=args.worker, devices=len(worker.drivers))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
