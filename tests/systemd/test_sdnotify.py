"""dcim.app.sdnotify against a real AF_UNIX datagram socket (what systemd listens on)."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dcim.app.sdnotify import DROPPED, Notifier, watchdog_interval

if TYPE_CHECKING:
    from tests.systemd.conftest import NotifyListener

PROGRAM = Path(__file__).with_name("notify_program.py")
ROOT = Path(__file__).resolve().parents[2]


def test_from_env_is_none_without_socket() -> None:
    assert Notifier.from_env({}) is None
    assert Notifier.from_env({"NOTIFY_SOCKET": ""}) is None


def test_rejects_relative_socket() -> None:
    with pytest.raises(ValueError, match="absolute path"):
        Notifier("run/notify")


async def test_ready_status_stopping_watchdog(notify_listener: NotifyListener) -> None:
    found = Notifier.from_env({"NOTIFY_SOCKET": notify_listener.path})
    assert found is not None
    with found as notifier:
        assert notifier.ready("2 devices, 2 online")
        assert (await notify_listener.next()).fields == {"READY": "1", "STATUS": "2 devices, 2 online"}
        notifier.status("1 alarm firing\nINJECTED=1")
        # A newline in the text must not smuggle in another assignment.
        assert (await notify_listener.next()).fields == {"STATUS": "1 alarm firing INJECTED=1"}
        notifier.watchdog()
        assert (await notify_listener.next()).fields == {"WATCHDOG": "1"}
        notifier.extend_timeout(2.5)
        assert (await notify_listener.next()).fields == {"EXTEND_TIMEOUT_USEC": "2500000"}
        notifier.stopping()
        assert (await notify_listener.next()).fields == {"STOPPING": "1"}
        assert notifier.sent == 5 and notifier.dropped == 0


async def test_abstract_socket() -> None:
    name = f"dcim-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.setblocking(False)
    try:
        with Notifier(f"@{name}") as notifier:
            notifier.ready()
            data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 1024), 10)
            assert data == b"READY=1"
    finally:
        sock.close()


def test_full_socket_drops_instead_of_blocking(notify_listener: NotifyListener) -> None:
    before = DROPPED.get()
    with Notifier(notify_listener.path) as notifier:
        # Nobody reads: the receive queue fills and further sends must fail at once, not block.
        for _ in range(100_000):
            if not notifier.watchdog():
                break
        assert notifier.dropped == 1
        assert DROPPED.get() == before + 1
        # Once the reader drains the queue, messages flow again.
        assert notify_listener.pending()
        assert notifier.watchdog()


def test_missing_manager_is_counted_not_raised(short_tmp: Path) -> None:
    with Notifier(str(short_tmp / "gone")) as notifier:
        assert not notifier.ready()
        assert not notifier.watchdog()
        assert notifier.dropped == 2 and notifier.sent == 0


def test_watchdog_interval() -> None:
    assert watchdog_interval(None, {}) is None
    assert watchdog_interval(None, {"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval(2.0, {"WATCHDOG_USEC": "30000000"}) == 2.0
    assert watchdog_interval(2.0, {}) == 2.0
    assert watchdog_interval(0, {"WATCHDOG_USEC": "30000000"}) == 15.0
    # Configured slower than WatchdogSec would get a healthy service killed: half of WatchdogSec instead.
    assert watchdog_interval(45.0, {"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval(30.0, {"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval(None, {"WATCHDOG_USEC": "garbage"}) is None
    assert watchdog_interval(None, {"WATCHDOG_USEC": "0"}) is None
    # The watchdog belongs to another process (we are a child that inherited the environment).
    assert watchdog_interval(None, {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval(None, {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0


async def test_watchdog_loop_pings_only_while_alive(notify_listener: NotifyListener) -> None:
    healthy = True
    checks_while_stalled = 0
    stalled_checks = asyncio.Event()

    def alive() -> bool:
        nonlocal checks_while_stalled
        if not healthy:
            checks_while_stalled += 1
            if checks_while_stalled >= 3:
                stalled_checks.set()
        return healthy

    with Notifier(notify_listener.path) as notifier:
        task = asyncio.create_task(notifier.watchdog_loop(0.01, alive))
        try:
            for _ in range(3):
                assert (await notify_listener.next()).fields == {"WATCHDOG": "1"}
            healthy = False
            await asyncio.wait_for(stalled_checks.wait(), 10)
            # Drain what was sent before the switch; the three checks since then sent nothing.
            sent_before = notifier.sent
            notify_listener.pending()
            checks_while_stalled = 0
            stalled_checks.clear()
            await asyncio.wait_for(stalled_checks.wait(), 10)
            assert notifier.sent == sent_before
            assert notify_listener.pending() == []
            healthy = True
            assert (await notify_listener.next()).fields == {"WATCHDOG": "1"}
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_watchdog_loop_rejects_bad_interval(notify_listener: NotifyListener) -> None:
    with Notifier(notify_listener.path) as notifier, pytest.raises(ValueError):
        await notifier.watchdog_loop(0, lambda: True)


async def test_program_ready_watchdog_and_stall(notify_listener: NotifyListener) -> None:
    """A real process: READY after its first round, WATCHDOG at the rate, none while its loop is stalled."""
    interval = 0.1
    stall = 1.5
    env = {
        **os.environ,
        "NOTIFY_SOCKET": notify_listener.path,
        "WATCHDOG_USEC": str(int(interval * 2 * 1_000_000)),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("WATCHDOG_PID", None)
    proc = await asyncio.create_subprocess_exec(sys.executable, str(PROGRAM), str(stall), env=env)
    try:
        ready = await notify_listener.wait_for("READY")
        assert ready.fields["STATUS"].endswith("ticks")
        # Pings keep coming (their rate is not timed here: a loaded machine bunches and stretches gaps).
        pings = [await notify_listener.wait_for("WATCHDOG") for _ in range(5)]
        proc.send_signal(signal.SIGUSR2)
        # The ping after the signal may already be queued; the gap shows among the next few.
        after = [await notify_listener.wait_for("WATCHDOG") for _ in range(4)]
        gaps = [b.at - a.at for a, b in itertools.pairwise([pings[-1], *after])]
        assert max(gaps) >= stall * 0.9
        proc.send_signal(signal.SIGTERM)
        assert (await notify_listener.wait_for("STOPPING")).fields["STATUS"] == "bye"
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
