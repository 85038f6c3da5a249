"""A datagram socket standing in for systemd's $NOTIFY_SOCKET, and helpers to read from it."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass
class Message:
    at: float  # time.monotonic() when received
    fields: dict[str, str]


@dataclass
class NotifyListener:
    sock: socket.socket
    path: str
    received: list[Message] = field(default_factory=list)

    async def next(self, within: float = 10.0) -> Message:
        """The next datagram, waiting at most `within` seconds."""
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), within)
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        message = Message(time.monotonic(), fields)
        self.received.append(message)
        return message

    async def wait_for(self, key: str, within: float = 10.0) -> Message:
        """Read until a message carrying `key` arrives (deadline for the whole wait)."""
        deadline = time.monotonic() + within
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {key} within {within}s; got {[m.fields for m in self.received]}")
            message = await self.next(remaining)
            if key in message.fields:
                return message

    def pending(self) -> list[dict[str, str]]:
        """Datagrams already queued, without waiting."""
        out: list[dict[str, str]] = []
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return out
            out.append(dict(line.split("=", 1) for line in data.decode().split("\n") if line))


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer than that.
    path = Path(tempfile.mkdtemp(prefix="dcim-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def notify_listener(short_tmp: Path) -> Iterator[NotifyListener]:
    path = str(short_tmp / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    yield NotifyListener(sock, path)
    sock.close()
