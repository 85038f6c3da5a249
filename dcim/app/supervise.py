"""Supervision: a named long-running task that an unexpected exception restarts instead of ending the daemon.

    supervisor = Supervisor()
    tg.create_task(supervisor.run("mqtt-publisher", publisher.run), name="mqtt-publisher")
    supervisor.dead()        # names of critical tasks not running now (failed and waiting to restart)

As Home Assistant's coordinator and Erlang's supervisors do it: one bug or one hostile input must not take
the rules and alarms down with it. A failure is logged with its traceback once per distinct error (a task
that fails the same way every few seconds would otherwise flood the log), counted in
`dcim_task_restarts_total{task}`, kept for /healthz, and the task is started again after a capped,
jittered backoff (dcim.core.backoff). `CancelledError` always propagates: supervision never stands in
the way of a shutdown. Only `Exception` is caught; `KeyboardInterrupt` and `SystemExit` are not bugs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from dcim.core.backoff import Backoff
from dcim.core.metrics import REGISTRY

log = structlog.get_logger(__name__)

RESTARTS = REGISTRY.counter("dcim_task_restarts_total", "Supervised tasks restarted after an unexpected error",
                            ("task",))

# A task that ran this long before failing starts again from the shortest delay: it was healthy.
HEALTHY_RUN_SECONDS = 60.0


@dataclass
class TaskState:
    name: str
    critical: bool
    running: bool = False
    finished: bool = False  # returned normally: done with its work, not dead
    restarts: int = 0
    last_error: str = ""
    last_failure: float = 0.0  # time.time() of the last failure, for /healthz

    def to_dict(self) -> dict[str, Any]:
        return {"running": self.running, "restarts": self.restarts, "last_error": self.last_error or None,
                "last_failure": self.last_failure or None}


class Supervisor:
    def __init__(self, *, initial: float = 0.5, maximum: float = 30.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.tasks: dict[str, TaskState] = {}

    async def run(self, name: str, factory: Callable[[], Awaitable[Any]], *, critical: bool = True,
                  on_error: Callable[[BaseException], None] | None = None,
                  restart_on_return: bool = False) -> None:
        """Await `factory()` again and again until it returns (or for ever with `restart_on_return`).

        `on_error` runs after each failure, before the backoff (e.g. marking a device offline); its own
        failure is logged and does not stop the supervision.
        """
        state = self.tasks[name] = TaskState(name, critical)
        backoff = Backoff(initial=self.initial, maximum=self.maximum)
        loop = asyncio.get_running_loop()
        logged: set[str] = set()
        try:
            while True:
                started = loop.time()
                state.running = True
                try:
                    await factory()
                except asyncio.CancelledError:
                    raise
                except Exception as err:
                    state.running = False
                    self._failed(state, err, logged)
                    if on_error is not None:
                        try:
                            on_error(err)
                        except Exception:
                            log.exception("error handler of a supervised task failed", task=name)
                    if loop.time() - started >= HEALTHY_RUN_SECONDS:
                        backoff.reset()
                    await asyncio.sleep(backoff.next())
                    continue
                state.running = False
                if not restart_on_return:
                    state.finished = True
                    return
                log.warning("supervised task returned; starting it again", task=name)
                await asyncio.sleep(backoff.next())
        finally:
            state.running = False

    def _failed(self, state: TaskState, err: Exception, logged: set[str]) -> None:
        state.restarts += 1
        state.last_error = f"{type(err).__name__}: {err}"[:500]
        state.last_failure = time.time()
        RESTARTS.inc(task=state.name)
        key = f"{type(err).__qualname__}: {err}"
        if key not in logged and len(logged) < 20:
            # Once per distinct error, with the traceback; repeats are counted only (the metric, /healthz).
            logged.add(key)
            log.error("task failed unexpectedly; restarting it", task=state.name, restarts=state.restarts,
                      exc_info=err)

    def dead(self) -> list[str]:
        """Critical tasks that are not running now: failed and waiting for their restart."""
        return sorted(n for n, s in self.tasks.items() if s.critical and not s.running and not s.finished)

    def forget(self, name: str) -> None:
        """A task stopped on purpose (a device removed by a reload) is no longer watched."""
        self.tasks.pop(name, None)

    def report(self) -> dict[str, dict[str, Any]]:
        """Tasks that ever failed, for /healthz."""
        return {n: s.to_dict() for n, s in sorted(self.tasks.items()) if s.restarts}
