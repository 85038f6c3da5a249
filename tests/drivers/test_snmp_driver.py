"""The SNMP driver against the SNMP simulator (real UDP, real pysnmp agent): values, tables, outlet control,
security, missing values, deadlines."""

# ruff: noqa: F811 - pytest fixtures imported from tests/drivers/test_snmp_support.py
from __future__ import annotations

import asyncio

import pytest

from dcim.app.config import Config, parse_config
from dcim.app.poller import DeviceCoordinator
from dcim.core.pipeline import Pipeline
from dcim.core.samples import Quality, Value
from dcim.drivers.base import DriverContext
from dcim.drivers.errors import AuthError, DeviceTimeout, DriverError, WriteRejected
from dcim.drivers.profiles import load_profile
from dcim.drivers.snmp.driver import SnmpDriver
from dcim.drivers.snmp.points import Point
from dcim.simulators.plant import Plant
from dcim.simulators.snmp import SnmpSimulator
from tests.drivers.test_snmp_support import (  # noqa: F401 - fixtures by name
    V3,
    by_series,
    context,
    expected,
    hall,
    open_driver,
    pdu,
    pdu_config,
    plant,
    simulator,
    snmp_device,
    snmp_env,
)
from tests.helpers import hand_over


@pytest.mark.parametrize("device_id", ["apc-a01", "rpx-a01", "rpx-a02", "apc-a02"])
async def test_every_point_equals_the_plant(
    device_id: str, pdu_config: Config, plant: Plant, simulator: SnmpSimulator, context: DriverContext
) -> None:
    driver = await open_driver(pdu_config, device_id, context)
    try:
        samples = await driver.read()
    finally:
        await driver.close()
    assert all(s.quality is Quality.GOOD for s in samples), [s for s in samples if s.quality is not Quality.GOOD]
    got = by_series(samples)
    want: dict[tuple[str, str, tuple[tuple[str, str], ...]], Value] = {}
    for point in driver.profile.points:
        if point.readable:
            for tags, value in expected(plant, device_id, point).items():
                want[(point.measurement or "pdu", point.name, tags)] = value
    assert set(got) == set(want)
    for key, wanted in want.items():
        if isinstance(wanted, str):
            assert got[key] == wanted, key
        else:
            assert got[key] == pytest.approx(wanted, abs=1e-9), key
    outlets = {s.tags for s in samples if s.measurement == "pdu_outlet" and s.point == "state"}
    assert len(outlets) == plant.racks["A01" if device_id.endswith("a01") else "A02"].outlets
    assert got[("pdu", "power_w", ())] > 10_000
    phases = {s.tags for s in samples if s.point == "current_a" and s.tags and s.tags[0][0] == "phase"}
    assert phases == {(("phase", "1"),), (("phase", "2"),), (("phase", "3"),)}


async def test_48_and_24_outlet_tables_with_small_repetitions(
    pdu_config: Config, plant: Plant, simulator: SnmpSimulator, context: DriverContext
) -> None:
    # max_repetitions 3 forces many GETBULK rounds: the walk must stitch them without gaps or repeats.
    for device_id, outlets in (("apc-a01", 24), ("rpx-a02", 48), ("apc-a02", 48)):
        device = pdu_config.device(device_id).model_copy(update={"max_repetitions": 3, "deadline": 20.0})
        driver = SnmpDriver(device, load_profile(device.profile), context)  # type: ignore[arg-type]
        try:
            samples = await driver.read()
        finally:
            await driver.close()
        numbers = sorted(int(s.tags[0][1]) for s in samples if s.point == "current_a" and s.tags[0][0] == "outlet")
        assert numbers == list(range(1, outlets + 1))


async def test_outlet_switched_off_through_the_driver(
    pdu_config: Config, plant: Plant, simulator: SnmpSimulator, context: DriverContext
) -> None:
    for device_id in ("apc-a01", "rpx-a02"):
        driver = await open_driver(pdu_config, device_id, context)
        before = by_series(await driver.read())
        await driver.write("outlet_command:7", "off")
        after = by_series(await driver.read())
        seven = (("outlet", "7"),)
        assert before[("pdu_outlet", "state", seven)] == "on"
        assert after[("pdu_outlet", "state", seven)] == "off"
        assert after[("pdu_outlet", "power_w", seven)] == 0
        assert before[("pdu_outlet", "power_w", seven)] > 0
        await driver.write("outlet_command:7", "on")
        again = by_series(await driver.read())
        assert again[("pdu_outlet", "state", seven)] == "on"
        await driver.close()
    # Outlets off on both feeds of a rack remove that load from the rack (and so from its heat).
    rack = plant.racks["A01"]
    full = plant.rack_power_kw(rack)
    a = await open_driver(pdu_config, "apc-a01", context)
    b = await open_driver(pdu_config, "rpx-a01", context)
    before = by_series(await a.read())[("pdu", "power_w", ())]
    for n in range(1, 7):
        await a.write(f"outlet_command:{n}", "off")
        await b.write(f"outlet_command:{n}", "off")
    assert plant.rack_power_kw(rack) == pytest.approx(full * (1 - 6 / 24))
    after = by_series(await a.read())[("pdu", "power_w", ())]
    assert after == pytest.approx(before * (1 - 6 / 24), abs=10)
    await a.close()
    await b.close()


async def test_outlet_write_is_checked_before_sending(
    pdu_config: Config, simulator: SnmpSimulator, context: DriverContext
) -> None:
    driver = await open_driver(pdu_config, "apc-a01", context)
    with pytest.raises(WriteRejected, match="not one of"):
        await driver.write("outlet_command:7", "explode")
    with pytest.raises(WriteRejected, match="outlet_command:7"):
        await driver.write("outlet_command", "off")
    with pytest.raises(WriteRejected, match="not a row index"):
        await driver.write("outlet_command:seven", "off")
    with pytest.raises(WriteRejected, match="read-only"):
        await driver.write("power_w", 5)
    with pytest.raises(WriteRejected, match="no point"):
        await driver.write("nonsense", 5)
    # An outlet the PDU does not have: the agent refuses, the driver says so.
    with pytest.raises(DriverError, match="99"):
        await driver.write("outlet_command:99", "off")
    await driver.close()


async def test_read_only_community_cannot_switch(
    pdu_config: Config, simulator: SnmpSimulator, context: DriverContext
) -> None:
    # A write community the agent only lets read: the agent refuses (without one, the driver refuses first:
    # tests/drivers/test_snmp_hostile.py).
    device = pdu_config.device("apc-a01").model_copy(update={"write_community": "public"})
    driver = SnmpDriver(device, load_profile(device.profile), context)  # type: ignore[arg-type]
    with pytest.raises(AuthError, match="noAccess"):
        await driver.write("outlet_command:3", "off")
    await driver.close()


async def test_absent_values_are_bad_samples_with_their_reason(
    pdu_config: Config, simulator: SnmpSimulator, context: DriverContext
) -> None:
    profile = load_profile("apc-rpdu2")
    extra = [
        # The agent has no such object: noSuchInstance on GET, a column that walks to nothing.
        Point(name="peak_power_w", oid="1.3.6.1.4.1.318.1.1.26.4.3.1.6.1", scale=10, missing=[-1]),
        Point(name="frequency_hz", oid="1.3.6.1.4.1.318.1.1.26.99.1.*", index_tag="phase"),
    ]
    widened = profile.model_copy(update={"points": [*profile.points, *extra]})
    device = pdu_config.device("apc-a01")
    driver = SnmpDriver(device, widened, context)  # type: ignore[arg-type]
    samples = await driver.read()
    await driver.close()
    bad = {s.point: s for s in samples if s.quality is Quality.BAD}
    assert set(bad) == {"peak_power_w", "frequency_hz"}
    assert bad["peak_power_w"].reason.startswith("noSuchInstance: the agent has no 1.3.6.1.4.1.318.1.1.26.4.3.1.6.1")
    assert bad["frequency_hz"].reason.startswith("no rows under 1.3.6.1.4.1.318.1.1.26.99.1")
    assert "power_w" in {s.point for s in samples if s.quality is Quality.GOOD}


async def test_minus_one_reads_as_missing(
    pdu_config: Config, plant: Plant, simulator: SnmpSimulator, context: DriverContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The plant has no probe for this PDU: the simulator serves -1, as an APC without a probe does.
    original = plant.rows

    def rows(device: str, table: str) -> dict[int, dict[str, Value]]:
        found = original(device, table)
        return {n: {k: v for k, v in row.items() if k != "temp_c"} for n, row in found.items()} \
            if table == "probe" else found

    monkeypatch.setattr(plant, "rows", rows)
    driver = await open_driver(pdu_config, "apc-a01", context)
    samples = await driver.read()
    await driver.close()
    assert not [s for s in samples if s.point == "temp_c"]
    assert [s for s in samples if s.point == "humidity_pct"]


async def test_v3_wrong_key_fails_clearly_and_fast(
    pdu_config: Config, simulator: SnmpSimulator, context: DriverContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DCIM_TEST_SNMP_WRONG", "not-the-right-key")
    for field in ("auth_key", "priv_key"):
        raw = hall()
        for device in raw["devices"]:
            device["port"] = pdu_config.device(device["id"]).port  # type: ignore[union-attr]
        bad = next(d for d in raw["devices"] if d["id"] == "rpx-a02")
        bad[field] = "env:DCIM_TEST_SNMP_WRONG"
        config = parse_config(raw)
        driver = await open_driver(config, "rpx-a02", context)
        # The driver's deadline ends the read; the outer bound only turns a hang into a failure.
        async with asyncio.timeout(30):
            with pytest.raises((AuthError, DeviceTimeout)) as caught:
                await driver.read()
        await driver.close()
        assert "rpx-a02" in str(caught.value)
        # A healthy v3 PDU in the same process keeps working (its user's keys are not overwritten).
        good = await open_driver(pdu_config, "apc-a02", context)
        assert await good.read()
        await good.close()


async def test_dead_pdu_raises_within_deadline_while_healthy_one_keeps_answering(
    pdu_config: Config, plant: Plant, simulator: SnmpSimulator, context: DriverContext
) -> None:
    plant.inject("rpx-a01", "no_response")
    dead_cfg = pdu_config.device("rpx-a01").model_copy(update={"deadline": 0.8})
    dead = SnmpDriver(dead_cfg, load_profile("raritan-px"), context)  # type: ignore[arg-type]
    healthy = await open_driver(pdu_config, "apc-a01", context)

    async def dead_poll() -> None:
        # The driver's 0.8 s deadline ends the read; the outer bound only turns a hang into a failure.
        async with asyncio.timeout(30):
            with pytest.raises(DeviceTimeout, match="rpx-a01"):
                await dead.read()

    async def healthy_polls() -> int:
        polls = 0
        for _ in range(3):
            samples = await healthy.read()
            assert samples
            polls += 1
        return polls

    _, polls = await asyncio.gather(dead_poll(), healthy_polls())
    assert polls == 3
    plant.clear("rpx-a01")
    dead.deadline = 30.0  # answering again: as long as a loaded machine needs
    assert await dead.read()
    await dead.close()
    await healthy.close()


@pytest.mark.parametrize("device_id", ["rpx-a01", "apc-a01"])
async def test_a_pdu_never_read_reports_bad_the_series_its_readings_take(
    device_id: str, pdu_config: Config, plant: Plant, simulator: SnmpSimulator, context: DriverContext
) -> None:
    """A PDU whose first poll fails (busy at start, say) is BAD under the keys its readings will have: a
    probe's constant tags included, a write-only point left out. A BAD sample under another key would be a
    series of its own that no reading ever makes good again (seen: a demo's PDUs "2 point(s) unreadable" for
    good after a slow start)."""
    plant.inject(device_id, "no_response")
    device = pdu_config.device(device_id).model_copy(update={"deadline": 0.8})
    pipeline = Pipeline()
    coordinator = DeviceCoordinator(device, SnmpDriver(device, load_profile(device.profile), context),  # type: ignore[arg-type]
                                    pipeline)
    try:
        failed = await coordinator.poll_once()
        plant.clear(device_id)
        # The good poll gets all the time a loaded machine may need (the failed one only had to fail).
        coordinator.deadline = coordinator.driver.deadline = 30.0  # type: ignore[attr-defined]
        read = await coordinator.poll_once()
    finally:
        await coordinator.driver.close()
    assert coordinator.online
    assert failed.samples and all(s.quality is Quality.BAD for s in failed.samples)
    assert all(s.quality is Quality.GOOD for s in read.samples)
    keys = {(s.measurement, s.tags, s.point) for s in read.samples}
    assert [s for s in failed.samples if (s.measurement, s.tags, s.point) not in keys] == []


async def test_feed_trip_moves_load_and_near_overload_shows(
    pdu_config: Config, plant: Plant, simulator: SnmpSimulator, context: DriverContext
) -> None:
    a = await open_driver(pdu_config, "apc-a01", context)
    b = await open_driver(pdu_config, "rpx-a01", context)
    before_b = by_series(await b.read())[("pdu", "power_w", ())]
    plant.inject("apc-a01", "feed_trip")
    assert by_series(await a.read())[("pdu", "power_w", ())] == 0
    after_b = by_series(await b.read())[("pdu", "power_w", ())]
    assert after_b == pytest.approx(2 * before_b, abs=20)
    plant.clear("apc-a01")
    plant.inject("rpx-a01", "near_overload")
    assert by_series(await b.read())[("pdu", "load_state", ())] == "near_overload"
    await a.close()
    await b.close()


@pytest.mark.parametrize("auth,priv", [
    ("md5", "des"), ("sha", "aes128"), ("sha224", "aes192"), ("sha256", "aes256"),
    ("sha384", "aes128"), ("sha512", "aes256"), ("sha", "none"),
])
async def test_v3_protocols(auth: str, priv: str, snmp_env: None, context: DriverContext) -> None:
    security = {**V3, "auth_protocol": auth, "priv_protocol": priv}
    if priv == "none":
        del security["priv_key"]
    # v1 has no GETBULK: a Raritan walk is one GETNEXT per row (~130 requests), hence the deadline.
    raw = hall([pdu("p1", "apc-rpdu2", **security), pdu("p2", "raritan-px", version="1", deadline="10s")])
    config = parse_config(raw)
    async with SnmpSimulator(hand_over(Plant(config, frozen=True), config.devices), config.devices, refresh=0):  # type: ignore[arg-type]
        for device_id in ("p1", "p2"):
            driver = await open_driver(config, device_id, context)
            samples = await driver.read()
            await driver.write("outlet_command:2", "off")
            after = by_series(await driver.read())
            await driver.close()
            assert len(samples) > 100
            assert after[("pdu_outlet", "state", (("outlet", "2"),))] == "off"


def test_profiles_share_canonical_names() -> None:
    apc, raritan = load_profile("apc-rpdu2"), load_profile("raritan-px")

    def names(profile: object) -> set[tuple[str, str, str]]:
        return {(p.measurement or "pdu", p.name, p.index_tag or next(iter(p.tags), ""))
                for p in profile.points}  # type: ignore[attr-defined]

    shared = names(apc) & names(raritan)
    for key in [("pdu", "power_w", ""), ("pdu", "energy_kwh", ""), ("pdu", "load_state", ""),
                ("pdu", "current_a", "phase"), ("pdu", "current_a", "bank"),
                ("pdu_outlet", "state", "outlet"), ("pdu_outlet", "outlet_command", "outlet"),
                ("pdu", "temp_c", "probe"), ("pdu", "near_overload_w", "")]:
        assert key in shared, key


@pytest.mark.parametrize("point,message", [
    ({"name": "x", "oid": "PowerNet-MIB::rPDU2DeviceStatusPower.1"}, "not a numeric OID"),
    ({"name": "x", "oid": "1.3.6.1.4.1.318.*"}, "index_tag"),
    ({"name": "x", "oid": "1.3.6.1.4.1.318.1", "index_tag": "outlet"}, "no \\*"),
    ({"name": "x", "oid": "1.3.*.6.*"}, "more than once"),
    ({"name": "x", "oid": "1.3.6", "scale": 0}, "scale"),
])
def test_profile_errors_are_clear(point: dict[str, object], message: str) -> None:
    from dcim.drivers.profiles import ProfileError, parse_profile

    with pytest.raises(ProfileError, match=message):
        parse_profile({"name": "t", "kind": "pdu", "protocol": "snmp", "points": [point]})


async def test_undecodable_values_are_bad_samples_with_a_reason(
    pdu_config: Config, simulator: SnmpSimulator, context: DriverContext
) -> None:
    apc = load_profile("apc-rpdu2")
    rpx = load_profile("raritan-px")

    def replace(profile: object, name: str, tag: str | None, **changes: object) -> object:
        points = [p.model_copy(update=changes) if p.name == name and p.index_tag == tag else p
                  for p in profile.points]  # type: ignore[attr-defined]
        return profile.model_copy(update={"points": points})  # type: ignore[attr-defined]

    # An enumeration that lacks a state the agent reports: BAD with the raw value, the other points fine.
    narrow = replace(apc, "state", "outlet", enum={1: "off"})
    driver = SnmpDriver(pdu_config.device("apc-a01"), narrow, context)  # type: ignore[arg-type]
    samples = await driver.read()
    await driver.close()
    bad = [s for s in samples if s.quality is Quality.BAD]
    assert len(bad) == 24 and {s.reason for s in bad} == {"unknown value 2"}
    assert all(s.value is None and s.measurement == "pdu_outlet" for s in bad)
    assert len(samples) - len(bad) > 90
    # Decimal digits: the agent has no such object -> the profile's usual digits, else BAD.
    nowhere = "1.3.6.1.4.1.13742.6.3.99.1.1.5"
    fallback = replace(rpx, "power_w", None, digits_oid=nowhere, digits=1)
    unknown = replace(rpx, "power_w", None, digits_oid=nowhere, digits=None)
    for profile, expect in ((fallback, "good"), (unknown, "bad")):
        driver = SnmpDriver(pdu_config.device("rpx-a01"), profile, context)  # type: ignore[arg-type]
        got = {(s.point, s.tags): s for s in await driver.read()}
        await driver.close()
        power = got[("power_w", ())]
        assert power.quality.value == expect
        if expect == "bad":
            assert "decimal digits unknown" in power.reason
    # A value that is not a number (an OCTET STRING where a gauge was expected).
    driver = SnmpDriver(pdu_config.device("apc-a01"), apc, context)  # type: ignore[arg-type]
    sample = driver._sample(apc.points[1], b"n/a", None, (), 1)
    assert sample is not None and sample.quality is Quality.BAD and "not an integer" in sample.reason
    await driver.close()
