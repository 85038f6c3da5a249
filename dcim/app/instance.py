"""One daemon per state_dir, and names that tell instances apart.

    lock = InstanceLock(state_dir)
    lock.acquire()            # StartupError naming the holder's pid when another daemon holds it
    ...
    lock.release()

The lock is `flock(2)` on `<state_dir>/dcim.lock`: the kernel drops it when the process dies however it
dies (kill -9 included), so a stale lock file never blocks a restart. The file holds the holder's pid, for
the message a second instance prints.

Two daemons with one state_dir would write the same outboxes and alarm store; two daemons on one host with
the same MQTT client id knock each other off the broker (the broker drops the older session on every
connect). The default client ids therefore carry the host name and a short hash of the state_dir's real
path: stable across restarts of one instance (the broker session is kept), distinct between instances.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import socket
from pathlib import Path

LOCK_NAME = "dcim.lock"


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
