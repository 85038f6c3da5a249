"""Instance identity: a lock per state_dir, MQTT client ids that differ between instances on one host."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dcim.app.config import MqttConfig, parse_config
from dcim.app.ingest import ingest_client_id
from dcim.app.instance import InstanceLock, StartupError, instance_tag
from dcim.app.publisher import client_id


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
