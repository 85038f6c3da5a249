"""Instance identity: a lock per state_dir, MQTT client ids that differ between instances on one host."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from dcim.app.config import MqttConfig, parse_config
from dcim.app.ingest import ingest_client_id
from dcim.app.instance import InstanceLock, StartupError, instance_tag
from dcim.app.publisher import client_id
from dcim.simulators.plant import Plant
from tests.chaos.daemonlib import http_port, log_events, metrics, with_http
from tests.e2e.harness import DaemonProcess, cdu_hall, load, simulators
from tests.helpers import wait_until


def test_client_ids_are_stable_per_state_dir_and_differ_between_instances(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    mqtt = MqttConfig(host="127.0.0.1")
    assert client_id(mqtt, "publisher", instance_tag(one)) == client_id(mqtt, "publisher", instance_tag(one))
    assert client_id(mqtt, "publisher", instance_tag(one)) != client_id(mqtt, "publisher", instance_tag(two))
    # The same directory through another spelling is the same instance.
    assert instance_tag(one) == instance_tag(tmp_path / "x" / ".." / "one")
    # Configured ids win.
    assert client_id(MqttConfig(host="h", client_id="mine"), "publisher", instance_tag(one)) == "mine"
    ids = {ingest_client_id(parse_config({"site": {"id": "s"}, "state_dir": str(d)})) for d in (one, two)}
    assert len(ids) == 2 and all(i.startswith("dcim-ingest-") and i.endswith("-dcim-ingest") for i in ids)


def test_the_lock_is_exclusive_names_its_holder_and_is_released(tmp_path: Path) -> None:
    first = InstanceLock(tmp_path / "state")
    first.acquire()
    with pytest.raises(StartupError, match=f"another dcim instance \\(pid {os.getpid()}\\)"):
        InstanceLock(tmp_path / "state").acquire()
    first.release()
    again = InstanceLock(tmp_path / "state")
    again.acquire()
    assert again.held
    again.release()


async def test_two_daemons_on_one_host_share_a_broker_without_knocking_each_other_off(
        tmp_path: Path, mosquitto: Any) -> None:
    daemons = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        daemons.append(with_http(cdu_hall(tmp_path / name, mqtt=mosquitto, cdus=1, interval="200ms")))
    configs = [load(p) for p in daemons]
    async with simulators(configs[0], Plant(configs[0], frozen=True)), \
            simulators(configs[1], Plant(configs[1], frozen=True)):
        with DaemonProcess(daemons[0]) as one, DaemonProcess(daemons[1]) as two:
            for daemon in (one, two):
                port = await wait_until(lambda d=daemon: http_port(d), timeout=30, message="http port")
                # Enough traffic that a shared client id would have cut one of them off many times.
                await wait_until(lambda p=port: _published_at_least(p, 40), timeout=60,
                                 message="40 messages acknowledged by the broker")
            for daemon in (one, two):
                assert len(log_events(daemon, "connected to broker")) == 1, daemon.log()
                assert log_events(daemon, "broker unavailable; buffering in the outbox") == [], daemon.log()
            ids = {e["instance"] for d in (one, two) for e in log_events(d, "daemon started")}
            assert len(ids) == 2
            assert one.stop() == 0, one.log()
            assert two.stop() == 0, two.log()


async def _published_at_least(port: int, count: int) -> bool:
    sample = await metrics(port)
    return sample.get(("dcim_mqtt_published_total", frozenset()), 0.0) >= count
