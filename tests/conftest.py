"""Shared fixtures: real servers on ports of their own in temp dirs, alert-hook receivers, and a task-leak check.

Server fixtures are function-scoped: each starts in 20 to 60 ms (bench/bench_servers.py, figures in
bench/servers.md), so every test gets a clean server it may stop, restart or pause. A missing binary
skips the test with the package to install, except under CI (CI=true), where it fails: CI runs everything.
"""

from __future__ import annotations

import asyncio
import secrets
import warnings
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pytest_asyncio import is_async_test

from tests.helpers import free_port as _free_port
from tests.helpers import release_held_ports, require_binary
from tests.receivers import HttpReceiver, SmtpReceiver
from tests.servers import InfluxDBv1, Mosquitto, ServerProcess, VictoriaMetrics

S = TypeVar("S", bound=ServerProcess)

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
_LEAK_GRACE_S = 1.0  # time given to tasks that were cancelled but have not finished yet


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "allow_task_leaks: do not fail this async test for tasks it leaves pending"
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    reports = request.node.stash.get(_REPORTS, {})
    return any(r.failed for r in reports.values())


def _require(cls: type[ServerProcess]) -> None:
    require_binary(cls.binary_name, cls.package)


def _serve(request: pytest.FixtureRequest, server: S) -> Iterator[S]:
    try:
        server.start()
        yield server
    finally:
        if _failed(request):
            # Shown under "Captured stdout teardown" of the failed test.
            print(f"--- {server.name} log ({server.log_path}) ---\n{server.log_tail()}")
        server.close()


@pytest.fixture
def mosquitto(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto broker (MQTT 3.1.1 and 5), anonymous, no persistence: ``.host``, ``.port``."""
    _require(Mosquitto)
    yield from _serve(request, Mosquitto(tmp_path / "mosquitto"))


@pytest.fixture
def influxdb_v1(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[InfluxDBv1]:
    """InfluxDB 1.x with the database ``dcim``: ``.url``, ``.query(influxql)``, ``.write(lines)``."""
    _require(InfluxDBv1)
    yield from _serve(request, InfluxDBv1(tmp_path / "influxdb"))


@pytest.fixture
def victoria_metrics(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VictoriaMetrics]:
    """VictoriaMetrics taking line protocol on /api/v2/write: ``.url``, ``.export(match)``, ``.query()``."""
    _require(VictoriaMetrics)
    yield from _serve(request, VictoriaMetrics(tmp_path / "victoria-metrics"))


@pytest.fixture
def server_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start more servers, or with options: ``server_factory(Mosquitto, persistence=True)``.
    Each gets its own directory under tmp_path; all are stopped at teardown."""
    started: list[ServerProcess] = []

    def start(cls: type[S], **kwargs: Any) -> S:
        _require(cls)
        server = cls(tmp_path / f"{cls.name}-{len(started)}", **kwargs)
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in reversed(started):
            if _failed(request):
                print(f"--- {server.name} log ({server.log_path}) ---\n{server.log_tail()}")
            server.close()


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    """An HTTP server recording every request: ``.url``, ``await .wait_for(count)``, ``.respond(500)``."""
    with HttpReceiver() as receiver:
        yield receiver


@pytest.fixture
def smtp_receiver() -> Iterator[SmtpReceiver]:
    """A plain SMTP server recording every message: ``.host``, ``.port``, ``await .wait_for(count)``."""
    with SmtpReceiver() as receiver:
        yield receiver


@pytest.fixture
def smtp_receiver_tls() -> Iterator[SmtpReceiver]:
    """SMTP that requires STARTTLS, then AUTH as ``.username``/``.password``; trust ``.cafile``."""
    with SmtpReceiver(starttls=True, username="dcim-alerts", password=secrets.token_urlsafe(12)) as receiver:
        yield receiver


@pytest.fixture
def free_port() -> int:
    """A loopback TCP port held for this test until its server binds it (more: ``tests.helpers.free_port()``)."""
    return _free_port()


@pytest.fixture(autouse=True)
def _release_held_ports() -> Iterator[None]:
    """Ports held by tests.helpers.free_port() and hold_udp_port() are released once the test and its
    fixtures are done (autouse: set up first, so torn down after the servers that use the ports)."""
    try:
        yield
    finally:
        release_held_ports()


def _describe(task: asyncio.Task[Any]) -> str:
    frames = task.get_stack(limit=1)
    where = f" waiting at {frames[0].f_code.co_filename}:{frames[0].f_lineno}" if frames else ""
    return f"{task.get_name()}: {task.get_coro()!r}{where}"


async def _pending_after_grace(before: set[asyncio.Task[Any]]) -> list[str]:
    """Tasks new since ``before`` that are still pending after a grace period; they are cancelled."""
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    deadline = loop.time() + _LEAK_GRACE_S
    while True:
        leaked = {t for t in asyncio.all_tasks() if t is not me and t not in before}
        if not leaked or loop.time() >= deadline:
            break
        await asyncio.sleep(0.01)  # a cancelled task needs loop turns to finish
    described = sorted(_describe(t) for t in leaked)
    for task in leaked:
        task.cancel()
    if leaked:
        await asyncio.wait(leaked, timeout=_LEAK_GRACE_S)
    return described


@pytest.fixture(autouse=True)
def _fail_on_leaked_tasks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail an async test that leaves tasks pending which were not pending when it started.

    Checked after the test's function-scoped fixtures are torn down (they may own tasks and cancel them
    there) and before its event loop closes (which would cancel the leaks silently).
    """
    item = request.node
    if not isinstance(item, pytest.Function) or not is_async_test(item):
        yield
        return
    if item.get_closest_marker("allow_task_leaks") is not None:
        yield
        return
    scope = getattr(item, "_loop_scope", "function")
    try:
        # pytest-asyncio's own fixture: requesting it here keeps the loop open until this check is done.
        runner: asyncio.Runner = request.getfixturevalue(f"_{scope}_scoped_runner")
    except pytest.FixtureLookupError:
        warnings.warn(
            "task-leak check disabled: this pytest-asyncio has no _<scope>_scoped_runner fixture",
            stacklevel=1,
        )
        yield
        return
    loop = runner.get_loop()
    before = set(asyncio.all_tasks(loop))
    yield
    if loop.is_closed() or loop.is_running():
        return
    leaked = runner.run(_pending_after_grace(before))
    # A test that already failed is likely to leave tasks behind because of that failure: clean up
    # (done above) without burying the real error under a second one.
    if leaked and not _failed(request):
        pytest.fail(
            f"{len(leaked)} asyncio task(s) still pending after the test (cancelled now):\n  "
            + "\n  ".join(leaked),
            pytrace=False,
        )
