"""What the demo's View makes of what it receives."""

from __future__ import annotations

import json

from dcim.app.config import load_config
from dcim.app.demo import View
from dcim.core.samples import Batch, DeviceStatus, Quality, Sample
from tests.demo.busy import EXAMPLE


def test_a_status_from_the_broker_older_than_the_pipelines_does_not_win() -> None:
    view = View(load_config(EXAMPLE))
    view.on_status(DeviceStatus("apc-a01a", "pdu", True, 2_000))
    # The broker delivers the change before it, late (its outbox ran behind the poller).
    stale = {"device": "apc-a01a", "kind": "pdu", "online": False, "error": "timeout", "ts": 1_000}
    view.mqtt_message("dcim/hall-1/status/apc-a01a", json.dumps(stale).encode())
    assert view.device_state("apc-a01a") == ("online", "")
    newer = {**stale, "ts": 3_000}
    view.mqtt_message("dcim/hall-1/status/apc-a01a", json.dumps(newer).encode())
    assert view.device_state("apc-a01a") == ("offline", "timeout")


def test_a_cdu_is_degraded_by_its_own_unreadable_points_not_by_derived_metrics() -> None:
    view = View(load_config(EXAMPLE))
    view.on_status(DeviceStatus("cdu-1", "cdu", True, 1))
    # What the rules derive for the CDU (measurement `plant`) lacks an input from elsewhere: still online.
    view.on_batch(Batch("cdu-1", "plant", 1, [
        Sample("cdu-1", "cooling_capacity_margin_kw", None, 1, Quality.BAD, "inputs missing", "plant")]))
    assert view.device_state("cdu-1") == ("online", "")
    view.on_batch(Batch("cdu-1", "cdu", 2, [Sample("cdu-1", "flow_lpm", None, 2, Quality.BAD, "timeout", "cdu"),
                                            Sample("cdu-1", "supply_temp_c", 32.0, 2, measurement="cdu")]))
    assert view.device_state("cdu-1") == ("degraded", "1 point(s) unreadable")
    view.on_batch(Batch("cdu-1", "cdu", 3, [Sample("cdu-1", "flow_lpm", 450.0, 3, measurement="cdu")]))
    assert view.device_state("cdu-1") == ("online", "")


def test_a_pdu_is_degraded_by_an_unreadable_probe_or_table_until_it_reads_again() -> None:
    view = View(load_config(EXAMPLE))
    view.on_status(DeviceStatus("apc-a01a", "pdu", True, 1))
    probe = (("probe", "1"),)
    view.on_batch(Batch("apc-a01a", "pdu", 1, [
        Sample("apc-a01a", "temp_c", None, 1, Quality.BAD, "sensor unavailable", "pdu", probe),
        # A table the agent did not answer: one BAD sample for the column, without a row.
        Sample("apc-a01a", "current_a", None, 1, Quality.BAD, "no rows", "pdu")]))
    assert view.device_state("apc-a01a") == ("degraded", "2 point(s) unreadable")
    view.on_batch(Batch("apc-a01a", "pdu", 2, [
        Sample("apc-a01a", "temp_c", 24.0, 2, measurement="pdu", tags=probe),
        Sample("apc-a01a", "current_a", 10.5, 2, measurement="pdu", tags=(("phase", "1"),))]))
    assert view.device_state("apc-a01a") == ("online", "")


def test_a_row_gone_from_the_poll_is_no_longer_unreadable_and_the_set_stays_bounded() -> None:
    view = View(load_config(EXAMPLE))
    view.on_status(DeviceStatus("apc-a01a", "pdu", True, 1))
    # An agent that answers every poll with new, unreadable row indexes.
    for poll in range(1, 501):
        rows = [Sample("apc-a01a", "current_a", None, poll, Quality.BAD, "no value", "pdu",
                       (("outlet", f"{poll}.{n}"),)) for n in range(3)]
        view.on_batch(Batch("apc-a01a", "pdu", poll, [*rows, Sample("apc-a01a", "power_w", 1.0, poll,
                                                                     measurement="pdu")]))
    assert len(view.bad["apc-a01a"]) == 3
    assert view.device_state("apc-a01a") == ("degraded", "3 point(s) unreadable")
    view.on_batch(Batch("apc-a01a", "pdu", 501, [Sample("apc-a01a", "power_w", 1.0, 501, measurement="pdu")]))
    assert view.device_state("apc-a01a") == ("online", "")
