"""One daemon per state_dir, names that tell instances apart, and the start-up checks that must come first.

    lock = InstanceLock(state_dir)
    lock.acquire()            # StartupError naming the holder's pid when another daemon holds it
    ...
    lock.release()

    claim = Claim.take(config)   # the lock, then the HTTP listener bound: StartupError in one line
    ...                          # the heavy imports and the build; the HTTP API serves claim.sockets
    claim.release()

The lock is `flock(2)` on `<state_dir>/dcim.lock`: the kernel drops it when the process dies however it
dies (kill -9 included), so a stale lock file never blocks a restart. The file holds the holder's pid, for
the message a second instance prints.

Two daemons with one state_dir would write the same outboxes and alarm store; two daemons on one host with
the same MQTT client id knock each other off the broker (the broker drops the older session on every
connect). The default client ids therefore carry the host name and a short hash of the state_dir's real
path: stable across restarts of one instance (the broker session is kept), distinct between instances.

`dcim run` takes the claim right after the configuration is parsed, before it imports the daemon and the
protocol libraries (pymodbus, pysnmp, asyncua, influxdb_client: seconds on a loaded machine): a second
instance, an unwritable state_dir or a taken HTTP port is reported before any of that work. This module
therefore imports only the standard library.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dcim.app.config import Config

LOCK_NAME = "dcim.lock"
RESERVE_NAME = "dcim.reserve"
# Room enough to open every store of the state_dir (a SQLite file in WAL mode needs a 32 KiB index).
RESERVE_BYTES = 1 << 20
# A file system that refuses writes for want of room (not a read-only or failing one).
FULL = (errno.ENOSPC, errno.EDQUOT)
# What asyncio's create_server uses: the kernel's queue of connections made before the API serves them.
LISTEN_BACKLOG = 100


class StartupError(Exception):
    """A condition that stops the daemon before it starts: reported in one line, exit status 1."""


def instance_tag(state_dir: str | Path) -> str:
    """`<hostname>-<8 hex digits of the state_dir's real path>`: one per daemon instance on a host."""
    real = os.path.realpath(state_dir)
    digest = hashlib.sha256(real.encode()).hexdigest()[:8]
    return f"{socket.gethostname()}-{digest}"


class InstanceLock:
    def __init__(self, state_dir: str | Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Create the state_dir if needed and take the lock, or raise StartupError in one clear sentence."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise StartupError(f"state_dir {self.state_dir} is not writable: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_pid(fd)
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f"pid {holder}" if holder else "another process"
                raise StartupError(f"another dcim instance ({who}) is running on state_dir {self.state_dir} "
                                   f"(lock {self.path})") from None
            raise StartupError(f"cannot lock {self.path}: {err.strerror or err}") from None
        try:
            # Written over the old pid, then cut to length: an existing lock file needs no new block.
            pid = f"{os.getpid()}\n".encode()
            os.pwrite(fd, pid, 0)
            os.ftruncate(fd, len(pid))
            # A state_dir that takes the lock file but not a write (a read-only or failing file system)
            # fails here, at start, rather than in the first outbox write.
            os.fsync(fd)
        except OSError as err:
            if err.errno not in FULL:
                os.close(fd)
                raise StartupError(f"state_dir {self.state_dir} is not writable: {err.strerror or err}") from None
            # A full disk: the lock is held all the same (only the pid for a second instance's message is
            # missing); the daemon starts degraded, as when the disk fills while it runs.
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            # The pid stays in the file: harmless, as only a held flock means "running".
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def serves_http(config: Config, *, poll: bool = True) -> bool:
    """Whether the daemon runs the HTTP API (a polling daemon with `http.enabled`; with the rules off too: the
    rule service is built either way, and health and metrics matter most then)."""
    return poll and config.http.enabled


def bind_listeners(host: str, port: int) -> list[socket.socket]:
    """Bind and listen as asyncio's `create_server(host=..., port=...)` would (every address the host
    resolves to, SO_REUSEADDR, IPv6 sockets IPv6-only), so the server later takes over the sockets as
    they are. A failure closes what was bound and raises StartupError in one line."""
    where = f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                                   socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise StartupError(f"http api cannot listen on {where}: {err.strerror or err}") from None
    bound: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            # Listening at once: SO_REUSEADDR lets another socket bind a port nobody listens on yet.
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except OSError as err:
        for sock in bound:
            sock.close()
        reason = os.strerror(err.errno).lower() if err.errno else str(err)
        raise StartupError(f"http api cannot listen on {where}: {reason}") from None
    return bound


class Reserve:
    """`<state_dir>/dcim.reserve`: room kept for a start on a full disk.

    Opening the stores writes to the disk (SQLite's WAL index), so a daemon restarted on a file system that
    filled meanwhile could not even open them. While the disk has room the daemon keeps this file of
    RESERVE_BYTES; a start that finds less free room than that deletes it, opens its stores in the room it
    made, and runs degraded (telemetry, alarms and status in memory) until the disk has room again, when
    the file is made again. A state_dir that cannot hold the lock file and this reserve is a start-up error.
    """

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / RESERVE_NAME

    def free_bytes(self) -> int | None:
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return None
        # root may also use the blocks the file system keeps for it.
        return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize

    def release_if_full(self) -> bool:
        """At start: give the reserve up when the file system has less free room than it. True if given up."""
        free = self.free_bytes()
        if free is None or free >= RESERVE_BYTES:
            return False
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True

    def make(self) -> bool:
        """Make the reserve if it is missing. False while the disk has no room for it (try again later):
        only once twice its size is free, so a start that gave it up does not take the room straight back."""
        try:
            if self.path.stat().st_size >= RESERVE_BYTES:
                return True
        except FileNotFoundError:
            pass
        free = self.free_bytes()
        if free is not None and free < 2 * RESERVE_BYTES:
            return False
        partial = self.path.with_name(RESERVE_NAME + ".part")
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)  # blocks allocated, not a sparse file
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(partial, self.path)
        except OSError as err:
            partial.unlink(missing_ok=True)
            if err.errno in FULL:
                return False
            raise
        return True


@dataclass
class Claim:
    """What the daemon holds from the first moment: the state_dir lock and the HTTP listening sockets.
    `reserve_released`: the disk was full at start, so the reserve was given up to open the stores."""

    lock: InstanceLock
    sockets: list[socket.socket] = field(default_factory=list)
    reserve_released: bool = False

    @classmethod
    def take(cls, config: Config, *, poll: bool = True) -> Claim:
        """The lock first (a second instance must not even bind its port), then the HTTP listener."""
        lock = InstanceLock(config.state_dir)
        lock.acquire()
        try:
            released = Reserve(config.state_dir).release_if_full()
            sockets = bind_listeners(config.http.host, config.http.port) if serves_http(config, poll=poll) else []
        except BaseException:
            lock.release()
            raise
        return cls(lock, sockets, released)

    def release(self) -> None:
        sockets, self.sockets = self.sockets, []
        for sock in sockets:
            sock.close()  # a no-op for those the HTTP server has closed already
        self.lock.release()
