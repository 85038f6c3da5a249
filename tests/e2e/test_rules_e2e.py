"""Rules end to end, in one process: CDU simulators (Modbus TCP) -> the daemon's device coordinators ->
pipeline -> RuleService -> Notifier -> a real local HTTP server (webhook, HMAC signature checked) and a
real local SMTP server. Inject a pump failure: the alarm is notified; restart the rule service and the
notifier while it fires: nothing is sent again; clear the fault: the resolved notifications arrive.

The first tests assemble the daemon's rule path in the test's process (to reach into the engine and the
store); the last one runs `dcim run` itself as a process and restarts it while an alarm fires.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dcim.app.config import Config, load_config
from dcim.app.poller import DeviceCoordinator, make_driver
from dcim.core.pipeline import Pipeline
from dcim.core.topology import Topology
from dcim.drivers.base import DriverContext
from dcim.drivers.profiles import load_profile
from dcim.rules.clock import SystemClock
from dcim.rules.hooks.webhook import verify_signature
from dcim.rules.notify import Notifier
from dcim.rules.service import RuleService
from dcim.simulators.plant import Plant
from tests.e2e.harness import cdu_hall, simulators
from tests.helpers import free_port, hold_udp_port, wait_until
from tests.receivers import HttpReceiver, SmtpReceiver

pytestmark = pytest.mark.e2e
SECRET = "e2e-webhook-secret"


def rules_config(receiver: HttpReceiver, smtp: SmtpReceiver | None, secret_file: Path) -> dict[str, Any]:
    fast = {"for": 0, "clear_after": 0}
    hooks: dict[str, Any] = {
        "ops": {"type": "webhook", "url": receiver.url + "/hook", "secret": f"file:{secret_file}", "timeout": 2},
    }
    if smtp is not None:
        hooks["mail"] = {"type": "email", "host": smtp.host, "port": smtp.port, "security": "none",
                         "from": "dcim@example.test", "to": ["noc@example.test"], "timeout": 5}
    return {
        "packs": {"air-rack": False, "liquid-rack": False, "chiller": False},
        "overrides": {"cdu-pump-fault": {"cdu-1": fast}, "cdu-flow-low": {"cdu-1": fast}},
        "tick": "200ms",
        "notifications": {
            "hooks": hooks,
            "routes": [{"match": {"severity": ["critical", "warning"]}, "hooks": sorted(hooks)}],
            "group_wait": 0.2, "group_interval": 0.5, "repeat_interval": 0,
            "retry": {"initial_backoff": 0.05, "max_backoff": 0.2},
        },
    }


@contextlib.asynccontextmanager
async def rules_daemon(config: Config) -> AsyncIterator[tuple[RuleService, Notifier]]:
    """The daemon's rule path: coordinators -> pipeline -> rules (first sink) -> notifier."""
    topology = Topology(config)
    pipeline = Pipeline()
    notifier = Notifier(config.rules.notifications, Path(config.state_dir), clock=SystemClock())
    service = RuleService(config, topology, publish=pipeline.publish, notifier=notifier, clock=SystemClock())
    pipeline.add_sink(service.sink)
    context = DriverContext()
    coordinators = [DeviceCoordinator(d, make_driver(d, load_profile(d.profile), context), pipeline)
                    for d in config.devices]
    tasks = [asyncio.create_task(notifier.run(), name="notifier"),
             asyncio.create_task(service.run(), name="rules")]
    tasks += [asyncio.create_task(c.run(), name=c.name) for c in coordinators]
    try:
        yield service, notifier
        # Let deliveries in flight finish before cancelling: a cancel that lands while aiosmtplib
        # completes a send can be lost (asyncio.wait_for race in 3.11), leaving the notifier running.
        await wait_until(lambda: all(notifier.outboxes[n].depth == 0
                                     and not d.failing for n, d in notifier.deliveries.items()),
                         timeout=20, message="notifier outboxes drained")
    finally:
        for task in tasks:
            task.cancel()
        # Bounded, so that a part that does not stop when cancelled fails the test by name.
        _, pending = await asyncio.wait(tasks, timeout=10)
        stuck = sorted(t.get_name() for t in pending)
        assert not stuck, f"tasks did not stop within 10 s of being cancelled: {stuck}"
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]


def webhook_alarms(receiver: HttpReceiver) -> list[tuple[str, str]]:
    out = []
    for request in receiver.recorder.items:
        body = request.json()
        out += [(a["key"], a["state"]) for a in body["alarms"] if a.get("changed")]
    return out


async def test_pump_failure_notifies_survives_restart_and_resolves(
        tmp_path: Path, http_receiver: HttpReceiver, smtp_receiver: SmtpReceiver) -> None:
    secret_file = tmp_path / "hook.secret"
    secret_file.write_text(SECRET)
    path = cdu_hall(tmp_path, cdus=1, interval="200ms",
                    rules=rules_config(http_receiver, smtp_receiver, secret_file))
    config = load_config(path)
    plant = Plant(config, frozen=True)
    async with simulators(config, plant):
        async with rules_daemon(config) as (service, _):
            await wait_until(lambda: service.engine.readings.number("cdu-1", "flow_lpm", SystemClock().now_ns()),
                             timeout=15, message="first CDU poll judged")
            plant.inject("cdu-1", "pump_failure")
            requests = await http_receiver.recorder.wait_for(count=1, timeout=20)
            fired = webhook_alarms(http_receiver)
            assert ("cdu-pump-fault/cdu-1", "firing") in fired
            first = requests[0]
            assert verify_signature(SECRET, first.body, first.headers["x-dcim-timestamp"],
                                    first.headers["x-dcim-signature"])
            [mail] = await smtp_receiver.recorder.wait_for(count=1, timeout=20)
            assert "cdu-pump-fault" in mail.text() and "noc@example.test" in mail.rcpt_tos
            await wait_until(lambda: len(service.store.active()) >= 2, timeout=10,
                             message="pump fault and low flow firing")
            await wait_until(lambda: ("cdu-flow-low/cdu-1", "firing") in webhook_alarms(http_receiver),
                             timeout=10)
            # Both firings mailed too, before the restart: a send in flight when the notifier is cancelled
            # can leave it hanging (aiosmtplib + wait_for race; reported to the notification side).
            await wait_until(lambda: sum("cdu-flow-low" in m.text() for m in smtp_receiver.recorder.items),
                             timeout=20, message="low-flow mail")
            await service.store.flush_async()
            sent_before_restart = len(http_receiver.recorder.items)

        # Restart while firing: the alarms are still there, and nothing is sent again.
        async with rules_daemon(config) as (service, _):
            assert {a.key for a in service.store.active()} == {"cdu-pump-fault/cdu-1", "cdu-flow-low/cdu-1"}
            judged = service.engine.evaluations
            await wait_until(lambda: service.engine.evaluations > judged + 50, timeout=15,
                             message="the restarted engine judging fresh polls")
            assert len(http_receiver.recorder.items) == sent_before_restart
            plant.clear("cdu-1")
            await wait_until(lambda: {("cdu-pump-fault/cdu-1", "resolved"), ("cdu-flow-low/cdu-1", "resolved")}
                             <= set(webhook_alarms(http_receiver)), timeout=20, message="resolved webhooks")
            await wait_until(lambda: sum("resolved" in (m.subject + m.text()).lower()
                                         for m in smtp_receiver.recorder.items), timeout=20,
                             message="resolved mail")
            assert service.store.active() == []
    firing = [k for k, s in webhook_alarms(http_receiver) if s == "firing"]
    assert sorted(firing) == ["cdu-flow-low/cdu-1", "cdu-pump-fault/cdu-1"]  # each exactly once


def power_hall(tmp_path: Path, receiver: HttpReceiver, secret_file: Path, racks_n: int = 2,
               interval: str = "200ms", timeout: str = "300ms") -> Path:
    """Liquid racks on one CDU (Modbus), each fed by two APC PDUs (SNMP), all simulated."""
    def device(dev_id: str, kind: str, protocol: str, profile: str) -> dict[str, Any]:
        out: dict[str, Any] = {"id": dev_id, "kind": kind, "protocol": protocol, "host": "127.0.0.1",
                               "port": hold_udp_port() if protocol == "snmp" else free_port(),
                               "profile": profile, "interval": interval, "timeout": timeout,
                               "retries": 0, "simulate": True}
        if protocol == "modbus":
            out["unit_id"] = 1
        return out
    devices = [device("cdu-1", "cdu", "modbus", "generic-cdu")]
    racks = []
    for rack in (f"R{n}" for n in range(1, racks_n + 1)):
        feeds = {}
        for side in "ab":
            devices.append(device(f"pdu-{rack}-{side}", "pdu", "snmp", "apc-rpdu2"))
            feeds[side] = {"pdu": f"pdu-{rack}-{side}", "breaker_a": 250}
        racks.append({"id": rack, "cooling": "liquid", "power_budget_kw": 150, "cdu": "cdu-1", "feeds": feeds})
    fast = {"for": 0, "clear_after": 0}
    rules = rules_config(receiver, None, secret_file)
    rules["packs"] = {"air-rack": False, "cdu-loop": False, "chiller": False}
    every = {f"R{n}": fast for n in range(1, racks_n + 1)}
    rules["overrides"] = {"liquid-rack-power-budget": every, "liquid-rack-redundancy": every}
    config = {"site": {"id": "hall-1"}, "rooms": [{"id": "dh1", "rows": [{"id": "A", "racks": racks}]}],
              "devices": devices, "state_dir": str(tmp_path / "state"), "http": {"enabled": False},
              "rules": rules}
    path = tmp_path / "dcim.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


async def test_rack_over_budget_and_a_feed_trip_notify_and_resolve(
        tmp_path: Path, http_receiver: HttpReceiver) -> None:
    secret_file = tmp_path / "hook.secret"
    secret_file.write_text(SECRET)
    config = load_config(power_hall(tmp_path, http_receiver, secret_file))
    plant = Plant(config, frozen=True)
    async with simulators(config, plant):
        await _power_scenario(config, plant, http_receiver)


async def _power_scenario(config: Config, plant: Plant, http_receiver: HttpReceiver) -> None:
    async with rules_daemon(config) as (service, _):
        await wait_until(lambda: service.engine.readings.number("R1", "redundant_headroom_kw",
                                                                SystemClock().now_ns()), timeout=15,
                         message="rack metrics from the PDUs")
        assert service.store.active() == []
        plant.racks["R1"].extra_kw = 60.0          # 172 kW on a 150 kW budget (and past one feed)
        plant.inject("pdu-R2-a", "feed_trip")      # B carries R2 alone: no redundancy left
        wanted = {("liquid-rack-power-budget/R1", "firing"), ("liquid-rack-redundancy/R2", "firing")}
        await wait_until(lambda: wanted <= set(webhook_alarms(http_receiver)), timeout=20,
                         message="budget and redundancy alarms on the webhook")
        r2 = service.store.get("liquid-rack-redundancy/R2")
        assert r2.value is not None and r2.value < 0 and r2.labels["rack"] == "R2"
        for request in http_receiver.recorder.items:
            assert verify_signature(SECRET, request.body, request.headers["x-dcim-timestamp"],
                                    request.headers["x-dcim-signature"])
        plant.racks["R1"].extra_kw = 0.0
        plant.clear("pdu-R2-a")
        done = {("liquid-rack-power-budget/R1", "resolved"), ("liquid-rack-redundancy/R2", "resolved")}
        await wait_until(lambda: done <= set(webhook_alarms(http_receiver)), timeout=20,
                         message="resolved on the webhook")
        await wait_until(lambda: service.store.active() == [], timeout=10)


async def test_storm_on_a_cdu_loop_sends_a_bounded_number_of_notifications(
        tmp_path: Path, http_receiver: HttpReceiver) -> None:
    secret_file = tmp_path / "hook.secret"
    secret_file.write_text(SECRET)
    racks = 6
    # Twelve SNMP agents, a CDU and the rules in this one process, on a machine that may be loaded: relaxed
    # polling (a generous answer time), so that no device looks offline for being slow; the waits below
    # end as soon as their condition holds, so their bounds cost nothing when the machine is idle.
    path = power_hall(tmp_path, http_receiver, secret_file, racks_n=racks, interval="2s", timeout="5s")
    raw = yaml.safe_load(path.read_text())
    every = {f"R{n}": {"for": 0, "clear_after": 0} for n in range(1, racks + 1)}
    raw["rules"]["packs"]["cdu-loop"] = True
    raw["rules"]["overrides"] = {"liquid-rack-coolant-flow": every, "liquid-rack-heat-capture": every,
                                 "cdu-pump-fault": {"cdu-1": {"clear_after": 0}},
                                 "cdu-flow-low": {"cdu-1": {"for": 0, "clear_after": 0}}}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    config = load_config(path)
    plant = Plant(config, frozen=True)
    async with simulators(config, plant):
        async with rules_daemon(config) as (service, _):
            await wait_until(lambda: all(service.engine.readings.number(f"R{n}", "flow_ratio_pct",
                                                                        SystemClock().now_ns())
                                         for n in range(1, racks + 1)), timeout=90, message="rack flow ratios")
            await wait_until(lambda: service.store.active() == [], timeout=90, message="a quiet hall")
            http_receiver.recorder.clear()
            plant.inject("cdu-1", "pump_failure")
            coolant = {f"liquid-rack-coolant-flow/R{n}" for n in range(1, racks + 1)}
            await wait_until(lambda: coolant <= {a.key for a in service.store.active()}, timeout=90,
                             message="every rack's coolant alarm firing")
            await wait_until(lambda: ("cdu-flow-low/cdu-1", "firing") in webhook_alarms(http_receiver),
                             timeout=90)
            notified = {key for key, state in webhook_alarms(http_receiver) if state == "firing"}
            assert notified == {"cdu-pump-fault/cdu-1", "cdu-flow-low/cdu-1"}
            assert all(service.store.get(k).suppressed.startswith("inhibited by ") for k in coolant)
            assert len(http_receiver.recorder.items) <= 2


async def test_daemon_process_restart_while_firing_sends_nothing_again(
        tmp_path: Path, http_receiver: HttpReceiver) -> None:
    from tests.e2e.harness import DaemonProcess

    secret_file = tmp_path / "hook.secret"
    secret_file.write_text(SECRET)
    path = cdu_hall(tmp_path, cdus=1, interval="200ms",
                    rules=rules_config(http_receiver, None, secret_file))
    config = load_config(path)
    plant = Plant(config, frozen=True)
    plant.inject("cdu-1", "pump_failure")
    async with simulators(config, plant):
        with DaemonProcess(path) as daemon:
            await wait_until(lambda: ("cdu-pump-fault/cdu-1", "firing") in webhook_alarms(http_receiver),
                             timeout=30, message=f"pump fault on the webhook; daemon log:\n{daemon.log()}")
            assert daemon.stop() == 0
        sent = len(http_receiver.recorder.items)
        with DaemonProcess(path) as daemon:
            # Both runs log into the same file: the second "first poll round done" is this run's.
            await wait_until(lambda: daemon.log().count("first poll round done") >= 2, timeout=30,
                             message="the restarted daemon polled (and so judged) the still-failed pumps")
            assert len(http_receiver.recorder.items) == sent, "a firing alarm was sent again after restart"
            plant.clear("cdu-1")
            await wait_until(lambda: ("cdu-pump-fault/cdu-1", "resolved") in webhook_alarms(http_receiver),
                             timeout=30, message="resolved after the restart")
            assert daemon.stop() == 0
    firing = [k for k, s in webhook_alarms(http_receiver) if s == "firing"]
    assert firing.count("cdu-pump-fault/cdu-1") == 1
