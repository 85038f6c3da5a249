# ruff: noqa: F811 - pytest fixtures imported from tests/drivers/test_snmp_support.py
"""SNMPv3 through the driver's own USM messages (drivers/snmp/fast_v3.py) against the pysnmp agent of the
simulator: the same samples as pysnmp's own manager, clock resynchronisation, engine change, refusals."""

from __future__ import annotations

import asyncio

import pytest

from dcim.app.config import Config, parse_config
from dcim.drivers.base import DriverContext
from dcim.drivers.errors import AuthError
from dcim.drivers.snmp.fast_v3 import UsmSession
from dcim.drivers.snmp.session import Session
from dcim.simulators.plant import Plant
from dcim.simulators.snmp import SnmpSimulator
from tests.drivers.test_snmp_support import (  # noqa: F401 - fixtures by name
    V3,
    by_series,
    context,
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


async def test_same_samples_as_pysnmp(pdu_config: Config, simulator: SnmpSimulator, context: DriverContext) -> None:
    for device_id in ("rpx-a02", "apc-a02"):
        ours = await open_driver(pdu_config, device_id, context)
        theirs = await open_driver(pdu_config.model_copy(update={"devices": [
            d.model_copy(update={"client": "pysnmp"}) if d.id == device_id else d for d in pdu_config.devices]}),
            device_id, context)
        assert isinstance(theirs._session(), Session)
        try:
            assert isinstance(ours._session(), UsmSession)
            mine, pysnmp = await asyncio.gather(ours.read(), theirs.read())
            await ours.write("outlet_command:11", "off")
            after = by_series(await theirs.read())
        finally:
            await ours.close()
            await theirs.close()
        assert by_series(mine) == by_series(pysnmp)
        assert after[("pdu_outlet", "state", (("outlet", "11"),))] == "off"


async def test_clock_drift_and_a_replaced_agent_are_recovered(
    pdu_config: Config, simulator: SnmpSimulator, context: DriverContext
) -> None:
    driver = await open_driver(pdu_config, "apc-a02", context)
    assert await driver.read()
    session = driver._session()
    assert isinstance(session, UsmSession)
    # Our idea of the agent's clock is 20 minutes off: a notInTimeWindow Report, resync, the poll goes on.
    synchronised = session.time_base
    session.time_base -= 1200
    assert await driver.read()
    assert abs(session.time_base - synchronised) < 5
    # The agent looks like another engine (a replaced PDU): unknownEngineID, rediscovery, new keys.
    original = session.engine_id
    session.engine_id = b"\x80\x00\x00\x00\x01replaced"
    assert await driver.read()
    assert session.engine_id == original
    await driver.close()


async def test_security_level_and_user_refusals(snmp_env: None, context: DriverContext) -> None:
    good = {**V3, "user": "alice"}
    config = parse_config(hall([pdu("p1", "apc-rpdu2", **good), pdu("p2", "apc-rpdu2")]))
    async with SnmpSimulator(hand_over(Plant(config, frozen=True), config.devices), config.devices, refresh=0):  # type: ignore[arg-type]
        for change, reason in (
            ({"user": "mallory"}, "unknown user name"),
            ({"priv_protocol": "none", "priv_key": None}, "unsupported security level"),
            ({"auth_protocol": "md5"}, "wrong digest"),
        ):
            device = snmp_device(config, "p1").model_copy(update=change)
            session = UsmSession(device, context)
            try:
                with pytest.raises(AuthError, match=reason):
                    await session.get([(1, 3, 6, 1, 4, 1, 318, 1, 1, 26, 4, 3, 1, 5, 1)])
            finally:
                session.close()
        session = UsmSession(snmp_device(config, "p1"), context)
        try:
            answer = await session.get([(1, 3, 6, 1, 4, 1, 318, 1, 1, 26, 4, 3, 1, 5, 1)])
        finally:
            session.close()
        assert isinstance(answer[0][1], int)


def test_only_for_v3(pdu_config: Config, context: DriverContext) -> None:
    with pytest.raises(ValueError, match="SNMPv3 only"):
        UsmSession(snmp_device(pdu_config, "apc-a01"), context)


async def test_plant_sees_v3_writes(pdu_config: Config, plant: Plant, simulator: SnmpSimulator,
                                    context: DriverContext) -> None:
    driver = await open_driver(pdu_config, "rpx-a02", context)
    await driver.write("outlet_command:40", "off")
    await driver.close()
    assert 40 in plant.racks["A02"].outlets_off["a"]
