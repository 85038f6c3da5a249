"""The per-device maps the sinks keep of a poll's samples, grouped by (measurement, row tags): the console's
live view and the points a failed poll reports BAD. A batch that mixes measurements and table rows, with
good and bad samples, is kept as if every sample were stored under its own (measurement, tags, point)."""

from __future__ import annotations

import sys

from dcim.app.console.live import LiveState
from dcim.app.poller import DeviceCoordinator
from dcim.core.pipeline import Pipeline
from dcim.core.samples import Batch, Quality, Sample, Value
from dcim.drivers.base import Driver
from dcim.drivers.errors import DriverError
from dcim.drivers.profiles import load_profile, parse_profile
from dcim.drivers.snmp.config import SnmpDevice
from tests.helpers import RecordingSink

TS = 1_700_000_000_000_000_000
L1 = (("phase", "L1"),)
L2 = (("phase", "L2"),)
O7 = (("outlet", "7"),)


def mixed(ts: int = TS) -> list[Sample]:
    """A PDU's poll: scalars, phase rows, an outlet row (a table of its own measurement), one BAD value."""
    return [
        Sample("pdu-1", "power_w", 7100.0, ts, measurement="pdu"),
        Sample("pdu-1", "current_a", 10.5, ts, measurement="pdu", tags=L1),
        Sample("pdu-1", "voltage_v", 230.1, ts, measurement="pdu", tags=L1),
        Sample("pdu-1", "current_a", 11.0, ts, measurement="pdu", tags=L2),
        Sample("pdu-1", "power_w", 310.0, ts, measurement="pdu_outlet", tags=O7),
        Sample("pdu-1", "energy_kwh", None, ts, Quality.BAD, "no such instance", "pdu"),
        # Equal but not the same objects as those above: still the same groups.
        Sample("pdu-1", "state", "on", ts, measurement="".join(["pdu_", "outlet"]), tags=(("outlet", "7"),)),
    ]


def test_the_live_view_keeps_every_point_by_its_key() -> None:
    live = LiveState()
    live.on_batch(Batch("pdu-1", "pdu", TS, mixed()))
    later = [Sample("pdu-1", "power_w", 7200.0, TS + 1, measurement="pdu"),
             Sample("pdu-1", "current_a", None, TS + 1, Quality.BAD, "timeout", "pdu", L1)]
    live.on_batch(Batch("pdu-1", "pdu", TS + 1, later))
    device = live.devices["pdu-1"]
    expected = {(s.measurement, s.tags, s.point): s for s in [*mixed(), *later]}
    assert device.samples == expected
    assert (device.bad, device.reason, device.batch_ns) == (1, "timeout", TS + 1)
    # The latest good scalar; a row's value or a BAD one is no scalar's.
    assert live.value("pdu-1", "power_w") == 7200.0
    assert live.value("pdu-1", "power_w", "pdu_outlet") is None
    assert live.value("pdu-1", "current_a") is None
    assert live.value("pdu-1", "energy_kwh") is None


def records_of(live: LiveState) -> dict[tuple[object, ...], int]:
    """Which record object holds each point of pdu-1, by (measurement, row tags, point)."""
    return {(*group, point): id(latest) for group, points in live.devices["pdu-1"].groups.items()
            for point, latest in points.items()}


def test_the_live_view_keeps_what_the_samples_carry_not_the_samples() -> None:
    """Keeping each poll's samples until the next would keep every device's last poll alive and young, for
    the garbage collector to walk at every collection: the view copies what they carry into a record per
    point, made once and written in place by each later poll."""
    live = LiveState()
    first = mixed()
    counts = [sys.getrefcount(s) for s in first]
    live.on_batch(Batch("pdu-1", "pdu", TS, first))
    assert [sys.getrefcount(s) for s in first] == counts
    records = records_of(live)
    second = mixed(TS + 5)
    live.on_batch(Batch("pdu-1", "pdu", TS + 5, second))
    assert [sys.getrefcount(s) for s in second] == counts
    assert records_of(live) == records
    assert live.devices["pdu-1"].samples == {(s.measurement, s.tags, s.point): s for s in second}


def test_a_sample_without_measurement_is_kept_under_the_batch_kind() -> None:
    live = LiveState()
    live.on_batch(Batch("cdu-1", "cdu", TS, [Sample("cdu-1", "flow_lpm", 450.0, TS)]))
    assert list(live.devices["cdu-1"].samples) == [("cdu", (), "flow_lpm")]
    assert live.value("cdu-1", "flow_lpm", "cdu") == 450.0


class OnceThenFails(Driver):
    """Answers one poll with `mixed()`, then fails every poll."""

    polls = 0

    async def connect(self) -> None:
        pass

    async def read(self) -> list[Sample]:
        self.polls += 1
        if self.polls == 1:
            return mixed()
        raise DriverError("no answer")

    async def write(self, point: str, value: Value) -> None:
        pass

    async def close(self) -> None:
        pass


async def test_a_failed_poll_reports_bad_every_point_last_seen_good() -> None:
    device = SnmpDevice(id="pdu-1", kind="pdu", protocol="snmp", profile="raritan-px", host="127.0.0.1")
    pipeline = Pipeline()
    recorder = RecordingSink()
    pipeline.add_sink(recorder)
    coordinator = DeviceCoordinator(device, OnceThenFails(device, load_profile("raritan-px")), pipeline)
    await coordinator.poll_once()
    failed = await coordinator.poll_once()
    assert all(s.quality is Quality.BAD and s.reason == "no answer" and s.value is None for s in failed.samples)
    # Every point that had a good value, with its measurement and row; energy_kwh never had one.
    assert sorted((s.measurement, s.tags, s.point) for s in failed.samples) == sorted(
        (s.measurement, s.tags, s.point) for s in mixed() if s.quality is Quality.GOOD)


class NeverAnswers(OnceThenFails):
    async def read(self) -> list[Sample]:
        raise DriverError("no answer")


async def test_a_device_never_read_reports_bad_its_readable_scalars_under_their_own_keys() -> None:
    profile = parse_profile({"name": "t", "kind": "pdu", "protocol": "snmp", "points": [
        {"name": "power_w", "oid": "1.3.6.1.4.1.99.1"},
        {"name": "temp_c", "oid": "1.3.6.1.4.1.99.2", "tags": {"probe": "1"}, "measurement": "env"},
        {"name": "reset_energy", "oid": "1.3.6.1.4.1.99.3", "readable": False, "writable": True,
         "enum": {1: "reset"}},
        {"name": "current_a", "oid": "1.3.6.1.4.1.99.4.*", "index_tag": "phase"},
    ]})
    device = SnmpDevice(id="pdu-1", kind="pdu", protocol="snmp", profile="t", host="127.0.0.1")
    failed = await DeviceCoordinator(device, NeverAnswers(device, profile), Pipeline()).poll_once()
    # A probe's constant tags are its readings' key; a write-only point and a table's unknown rows have none.
    assert sorted((s.measurement, s.tags, s.point) for s in failed.samples) == [
        ("env", (("probe", "1"),), "temp_c"), ("pdu", (), "power_w")]
