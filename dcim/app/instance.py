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
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            # A state_dir that takes the lock file but not a write (a full or read-only file system)
            # fails here, at start, rather than in the first outbox write.
            os.fsync(fd)
        except OSError as err:
            os.close(fd)
            raise StartupError(f"state_dir {self.state_dir} is not writable: {err.strerror or err}") from None
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
    """Whether the daemon runs the HTTP API: it serves the alarm store, so only with the rule engine."""
    return poll and config.rules.enabled and config.http.enabled


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


@dataclass
class Claim:
    """What the daemon holds from the first moment: the state_dir lock and the HTTP listening sockets."""

    lock: InstanceLock
    sockets: list[socket.socket] = field(default_factory=list)

    @classmethod
    def take(cls, config: Config, *, poll: bool = True) -> Claim:
        """The lock first (a second instance must not even bind its port), then the HTTP listener."""
        lock = InstanceLock(config.state_dir)
        lock.acquire()
        try:
            sockets = bind_listeners(config.http.host, config.http.port) if serves_http(config, poll=poll) else []
        except BaseException:
            lock.release()
            raise
        return cls(lock, sockets)

    def release(self) -> None:
        sockets, self.sockets = self.sockets, []
        for sock in sockets:
            sock.close()  # a no-op for those the HTTP server has closed already
        self.lock.release()
