"""A resolved alarm is never revived by a restart.

`dcim run` as a process against a simulated CDU (Modbus TCP), a real broker and a webhook receiver. The
pump fault is injected and cleared again and again; the daemon is stopped with SIGTERM right after a
change was announced (before the rule service's next store flush, the window where an older FIRING row
used to land after the newer RESOLVED one) and started again, several times. Afterwards the store, the
webhook notifications and the MQTT alarm topics all agree: every firing is followed by exactly one
resolve, and after the last clear nothing is firing anywhere, also after one more restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from dcim.simulators.plant import Plant
from tests.e2e.harness import DaemonProcess, cdu_hall, load, simulators
from tests.e2e.test_rules_e2e import SECRET, rules_config, webhook_alarms
from tests.helpers import wait_until
from tests.receivers import HttpReceiver

pytestmark = pytest.mark.e2e

PUMP = "cdu-pump-fault/cdu-1"
ROUNDS = 4
TOPIC = "dcim/hall-1/alarms/cdu-1/cdu-pump-fault"


@contextlib.asynccontextmanager
async def alarm_topics(port: int) -> AsyncIterator[list[tuple[str, bytes, bool]]]:
    """Every message on the alarm topics (and the CDU's polls), in order: (topic, payload, retained)."""
    seen: list[tuple[str, bytes, bool]] = []
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe("dcim/hall-1/alarms/#", qos=1)
        await client.subscribe("dcim/hall-1/cdu/+", qos=1)

        async def collect() -> None:
            async for message in client.messages:
                seen.append((str(message.topic), bytes(message.payload), bool(message.retain)))  # type: ignore[arg-type]

        task = asyncio.create_task(collect(), name="alarm-topics")
        try:
            yield seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def retained(port: int, topic: str) -> bytes | None:
    """The broker's retained message on `topic` now (None when there is none)."""
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(topic, qos=1)
        # The broker sends a retained message right after SUBACK; a ping round trip after the
        # subscription proves that anything retained has been delivered before it.
        await client.publish("dcim-test/ping", b"", qos=1)
        await client.subscribe("dcim-test/ping", qos=1)
        await client.publish("dcim-test/ping", b"pong", qos=1)
        async for message in client.messages:
            if str(message.topic) == topic:
                return bytes(message.payload)  # type: ignore[arg-type]
            if message.payload == b"pong":
                return None
    return None


def stored(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as db:
        return {k: s for k, s in db.execute("SELECT key, state FROM alarms")}


def pump_states(receiver: HttpReceiver) -> list[str]:
    return [state for key, state in webhook_alarms(receiver) if key == PUMP]


def starts(daemon: DaemonProcess) -> int:
    """Runs that completed their first poll round (every run logs into the same file)."""
    return daemon.log_path.read_text(errors="replace").count("first poll round done")


async def stop(daemon: DaemonProcess) -> None:
    # In a thread: the simulators in this loop keep answering while the daemon shuts down.
    assert await asyncio.to_thread(daemon.stop) == 0, daemon.log()


async def test_restarts_while_alarms_change_never_revive_a_resolved_alarm(
        tmp_path: Path, mosquitto: Any, http_receiver: HttpReceiver) -> None:
    secret_file = tmp_path / "hook.secret"
    secret_file.write_text(SECRET)
    path = cdu_hall(tmp_path, cdus=1, interval="200ms", mqtt=mosquitto,
                    rules=rules_config(http_receiver, None, secret_file))
    config = load(path)
    store_path = Path(config.state_dir) / config.rules.store
    plant = Plant(config, frozen=True)
    started = 0
    async with simulators(config, plant), alarm_topics(mosquitto.port) as topics:
        for round_ in range(ROUNDS):
            with DaemonProcess(path) as daemon:
                started += 1
                await wait_until(lambda n=started: starts(daemon) >= n,  # type: ignore[misc]
                                 timeout=30, message=f"daemon up, round {round_}:\n{daemon.log()}")
                # Two flips per run: fire, resolve, fire, resolve; the last resolve right before SIGTERM.
                for _ in range(2):
                    before = len(pump_states(http_receiver))
                    plant.inject("cdu-1", "pump_failure")
                    await wait_until(lambda b=before: pump_states(http_receiver)[b:] == ["firing"],  # type: ignore[misc]
                                     timeout=30, message=f"fired, round {round_}:\n{daemon.log()}")
                    plant.clear("cdu-1")
                    await wait_until(lambda b=before: pump_states(http_receiver)[b:] == ["firing", "resolved"],  # type: ignore[misc]
                                     timeout=30, message=f"resolved, round {round_}:\n{daemon.log()}")
                # Stopped at once: the resolve is in memory, the tick's flush may not have run yet.
                await stop(daemon)
            assert stored(store_path).get(PUMP) == "resolved", f"round {round_}: {stored(store_path)}"

        # One more start with the fault cleared: nothing comes back.
        with DaemonProcess(path) as daemon:
            started += 1
            await wait_until(lambda: starts(daemon) >= started, timeout=30,
                             message=daemon.log())
            # Polls judged after the restart (the rules see each poll before MQTT does, and tick every
            # 200 ms): a revived alarm would have been judged clear, resolved and notified again by now.
            polls = sum(1 for t, _, _ in topics if "/cdu/" in t)
            await wait_until(lambda: sum(1 for t, _, _ in topics if "/cdu/" in t) >= polls + 5, timeout=30,
                             message="polls after the restart")
            assert await retained(mosquitto.port, TOPIC) in (None, b"")
            await stop(daemon)

    states = pump_states(http_receiver)
    assert states == ["firing", "resolved"] * (2 * ROUNDS), states
    assert stored(store_path)[PUMP] == "resolved"
    # What was published on the alarm topic: set and cleared in turn (a message sent twice, at least
    # once, counts once), one set per injection, never set after the last clear.
    pump = [bool(payload) for topic, payload, retain in topics if topic == TOPIC and not retain]
    changes = [p for n, p in enumerate(pump) if n == 0 or p != pump[n - 1]]
    assert changes == [True, False] * (2 * ROUNDS), pump
