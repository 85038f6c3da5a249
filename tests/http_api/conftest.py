"""An HTTP API on an ephemeral port over the real alarm store (rules.store) in a temp dir."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from dcim.app.config import HttpConfig
from dcim.app.http_api import HttpApi
from dcim.core.events import AlarmState, Severity
from dcim.rules.clock import FakeClock
from dcim.rules.store import AlarmRecord, AlarmStore

TOKEN = "t0ken-for-tests"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> AlarmStore:
    s = AlarmStore(tmp_path / "alarms.sqlite", clock=clock)
    now = clock.now_ns()
    for rack, severity in (("A01", Severity.CRITICAL), ("A02", Severity.WARNING)):
        record = AlarmRecord(
            key=f"rack-power/{rack}", rule="rack-power", subject=rack, state=AlarmState.FIRING,
            severity=severity, metric="power_kw", value=61.5, threshold=57.0, message="over budget",
            labels={"site": "hall-1", "rack": rack}, since_ns=now, fired_ns=now, updated_ns=now, notified=True,
        )
        s.put(record, history=True)
    resolved = AlarmRecord(
        key="rack-flow/A03", rule="rack-flow", subject="A03", state=AlarmState.RESOLVED,
        severity=Severity.WARNING, since_ns=now, fired_ns=now, resolved_ns=now, updated_ns=now,
    )
    s.put(resolved, history=True)
    s.forget(resolved.key)
    s.flush()
    return s


@contextlib.asynccontextmanager
async def serving(api: HttpApi) -> AsyncIterator[str]:
    task = asyncio.create_task(api.run(), name="http-api-under-test")
    ready = asyncio.create_task(api.ready.wait())
    done, _ = await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        ready.cancel()
        task.result()
    try:
        yield f"http://127.0.0.1:{api.port}"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


ApiFactory = Callable[..., contextlib.AbstractAsyncContextManager[str]]


@pytest.fixture
def api(store: AlarmStore) -> ApiFactory:
    def make(token: str | None = TOKEN, **kw: Any) -> contextlib.AbstractAsyncContextManager[str]:
        config = HttpConfig(port=0, token=SecretStr(token) if token else None)
        return serving(HttpApi(config, store, **kw))

    return make


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
