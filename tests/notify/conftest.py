"""Fixtures for the notification tests: real HTTP and SMTP receivers (tests/receivers.py), a fake clock,
alarm events, and a notifier running in the background."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from dcim.core.events import AlarmEvent, AlarmState, Severity
from dcim.rules.clock import FakeClock
from dcim.rules.notify import Notifier
from dcim.rules.notify.config import NotifyConfig
from tests.receivers import HttpReceiver

# Fast retries: the tests wait for outcomes, never for the backoff itself.
FAST_RETRY = {"initial_backoff": 0.01, "max_backoff": 0.05, "jitter": 0.5}


@pytest.fixture
def receiver(http_receiver: HttpReceiver) -> HttpReceiver:
    """The shared `http_receiver` (tests/conftest.py) under a short name."""
    return http_receiver


@pytest.fixture
def second_receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as r:
        yield r


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def event(
    rack: str = "A01", rule: str = "rack-power", state: AlarmState = AlarmState.FIRING,
    severity: Severity = Severity.CRITICAL, ts_ns: int = 1_700_000_000_000_000_000, **kw: Any,
) -> AlarmEvent:
    labels = {"site": "hall-1", "room": "r1", "row": rack[0], "rack": rack, **kw.pop("labels", {})}
    return AlarmEvent(
        key=f"{rule}/{rack}", rule=rule, subject=rack, state=state, severity=severity, ts_ns=ts_ns,
        message=kw.pop("message", f"{rule} on {rack}"), metric=kw.pop("metric", "power_kw"),
        value=kw.pop("value", 61.5), threshold=kw.pop("threshold", 57.0), labels=labels, **kw,
    )


def webhook_config(url: str, **extra: Any) -> NotifyConfig:
    raw: dict[str, Any] = {
        "hooks": {"ops": {"type": "webhook", "url": url + "/hook", "timeout": 2}},
        "group_wait": 10, "group_interval": 60, "repeat_interval": 3600, "retry": FAST_RETRY,
    }
    raw.update(extra)
    return NotifyConfig.model_validate(raw)


@contextlib.asynccontextmanager
async def running(notifier: Notifier) -> AsyncIterator[Notifier]:
    task = asyncio.create_task(notifier.run(), name="notifier-under-test")
    ready = asyncio.create_task(notifier.ready.wait())
    done, _ = await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        ready.cancel()
        task.result()  # raises what run() failed with
    try:
        yield notifier
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def advance(clock: FakeClock, notifier: Notifier, seconds: float) -> None:
    """Let the notifier take what was submitted, let `seconds` pass, then wait until it has queued whatever
    became due."""
    await notifier.idle()
    clock.advance(seconds)
    notifier.wake()
    await notifier.idle()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"
