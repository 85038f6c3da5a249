"""The SNMP simulator is a real agent: net-snmp's own tools read and switch it, in v1, v2c and v3 authPriv.

The tools run as subprocesses under asyncio (the agent lives in this test's event loop, so a blocking
subprocess call would starve it)."""

# ruff: noqa: F811 - pytest fixtures imported from tests/drivers/test_snmp_support.py
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from dcim.app.config import Config
from dcim.simulators.plant import Plant
from dcim.simulators.snmp import MAX_BULK_VARBINDS, SnmpSimulator
from tests.drivers.test_snmp_support import (  # noqa: F401 - fixtures by name
    AUTH_KEY,
    PRIV_KEY,
    pdu_config,
    plant,
    simulator,
    snmp_device,
    snmp_env,
)
from tests.helpers import require_binary


@pytest.fixture(autouse=True)
def _needs_netsnmp() -> None:
    # Skipped on a developer's machine without it, failed under CI: CI must run every test.
    require_binary("snmpget", "snmp")

APC = "1.3.6.1.4.1.318.1.1.26"
RARITAN = "1.3.6.1.4.1.13742.6"


@pytest.fixture
def netsnmp_env(tmp_path: Path) -> dict[str, str]:
    # No MIB loading (numeric OIDs only), no user config, engine boots kept in the test's directory.
    return {**os.environ, "MIBS": "", "MIBDIRS": str(tmp_path), "SNMPCONFPATH": str(tmp_path),
            "SNMP_PERSISTENT_DIR": str(tmp_path)}


async def run(env: dict[str, str], tool: str, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        tool, "-On", "-Oq", "-t", "1", "-r", "1", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode()


def v2c(config: Config, device: str, community: str = "public") -> list[str]:
    d = snmp_device(config, device)
    return ["-v2c", "-c", community, f"{d.host}:{d.port}"]


def v3(config: Config, device: str, auth_key: str = AUTH_KEY) -> list[str]:
    d = snmp_device(config, device)
    return ["-v3", "-l", "authPriv", "-u", "dcim-v3", "-a", "SHA-256", "-A", auth_key, "-x", "AES",
            "-X", PRIV_KEY, f"{d.host}:{d.port}"]


def values(text: str) -> dict[str, str]:
    out = {}
    for line in text.strip().splitlines():
        if not line.startswith("."):
            continue  # net-snmp's notes on stderr, e.g. "Created directory: ..."
        oid, _, value = line.partition(" ")
        out[oid.lstrip(".")] = value.strip()
    return out


async def test_snmpget_reads_apc_power_in_hundredths_of_kw(
    pdu_config: Config, plant: Plant, simulator: SnmpSimulator, netsnmp_env: dict[str, str]
) -> None:
    code, out = await run(netsnmp_env, "snmpget", *v2c(pdu_config, "apc-a01"), f"{APC}.4.3.1.5.1", f"{APC}.4.3.1.4.1")
    assert code == 0, out
    got = values(out)
    watts = float(plant.values("apc-a01")["power_w"])
    assert int(got[f"{APC}.4.3.1.5.1"]) == round(watts / 10)
    assert got[f"{APC}.4.3.1.4.1"] == "2"  # normal


async def test_snmpwalk_and_bulkwalk_see_every_outlet(
    pdu_config: Config, plant: Plant, simulator: SnmpSimulator, netsnmp_env: dict[str, str]
) -> None:
    code, out = await run(netsnmp_env, "snmpwalk", *v2c(pdu_config, "apc-a01"), f"{APC}.9.2.3.1.5")
    assert code == 0, out
    assert len(values(out)) == 24 and set(values(out).values()) == {"2"}  # all on
    code, out = await run(netsnmp_env, "snmpbulkwalk", "-Cr10", *v3(pdu_config, "rpx-a02"),
                          f"{RARITAN}.5.4.3.1.4.1")
    assert code == 0, out
    rows = values(out)
    # 48 outlets x (rmsCurrent, activePower, powerFactor, activeEnergy)
    assert len(rows) == 48 * 4
    power = plant.rows("rpx-a02", "outlet")[5]["power_w"]
    assert int(rows[f"{RARITAN}.5.4.3.1.4.1.5.5"]) == round(float(power))
    # Decimal digits of outlet current: the driver reads these before scaling.
    code, out = await run(netsnmp_env, "snmpget", *v3(pdu_config, "rpx-a02"), f"{RARITAN}.3.5.4.1.7.1.5.1")
    assert code == 0 and values(out)[f"{RARITAN}.3.5.4.1.7.1.5.1"] == "2", out


async def test_snmpset_switches_an_outlet_in_the_plant(
    pdu_config: Config, plant: Plant, simulator: SnmpSimulator, netsnmp_env: dict[str, str]
) -> None:
    # APC: 2 = immediateOff (the MIB's value, not the swapped cheat-sheet one).
    code, out = await run(netsnmp_env, "snmpset", *v2c(pdu_config, "apc-a01", "private"),
                          f"{APC}.9.2.4.1.5.4", "i", "2")
    assert code == 0, out
    assert 4 in plant.racks["A01"].outlets_off["a"]
    code, out = await run(netsnmp_env, "snmpget", *v2c(pdu_config, "apc-a01"), f"{APC}.9.2.3.1.5.4",
                          f"{APC}.9.4.3.1.7.4")
    assert values(out) == {f"{APC}.9.2.3.1.5.4": "1", f"{APC}.9.4.3.1.7.4": "0"}
    # Raritan over v3 authPriv: switchingOperation 0 = off, 1 = on.
    code, out = await run(netsnmp_env, "snmpset", *v3(pdu_config, "rpx-a02"), f"{RARITAN}.4.1.2.1.2.1.9", "i", "0")
    assert code == 0, out
    assert 9 in plant.racks["A02"].outlets_off["a"]
    code, out = await run(netsnmp_env, "snmpset", *v3(pdu_config, "rpx-a02"), f"{RARITAN}.4.1.2.1.2.1.9", "i", "1")
    assert code == 0, out
    assert 9 not in plant.racks["A02"].outlets_off["a"]


async def test_refusals(
    pdu_config: Config, plant: Plant, simulator: SnmpSimulator, netsnmp_env: dict[str, str]
) -> None:
    # The read community may not switch.
    code, out = await run(netsnmp_env, "snmpset", *v2c(pdu_config, "apc-a01"), f"{APC}.9.2.4.1.5.4", "i", "2")
    assert code != 0 and "noAccess" in out, out
    assert not plant.racks["A01"].outlets_off["a"]
    # A value outside the command enumeration.
    code, out = await run(netsnmp_env, "snmpset", *v2c(pdu_config, "apc-a01", "private"),
                          f"{APC}.9.2.4.1.5.4", "i", "42")
    assert code != 0 and "wrongValue" in out, out
    # A read-only object.
    code, out = await run(netsnmp_env, "snmpset", *v2c(pdu_config, "apc-a01", "private"),
                          f"{APC}.4.3.1.5.1", "i", "1")
    assert code != 0 and "notWritable" in out, out
    # A wrong community gets no answer at all, as on a real agent.
    code, out = await run(netsnmp_env, "snmpget", *v2c(pdu_config, "apc-a01", "guess"), f"{APC}.4.3.1.5.1")
    assert code != 0 and "Timeout" in out, out
    # A wrong v3 key is refused (authentication failure report).
    code, out = await run(netsnmp_env, "snmpget", *v3(pdu_config, "rpx-a02", "wrong-key-wrong"),
                          f"{RARITAN}.5.2.3.1.4.1.1.5")
    assert code != 0 and ("Authentication failure" in out or "Decryption" in out), out
    # An object the agent does not have.
    code, out = await run(netsnmp_env, "snmpget", *v2c(pdu_config, "apc-a01"), f"{APC}.4.3.1.99.1")
    assert "No Such Instance" in out, out


async def test_v1_and_faults(
    pdu_config: Config, plant: Plant, simulator: SnmpSimulator, netsnmp_env: dict[str, str]
) -> None:
    d = snmp_device(pdu_config, "rpx-a01")
    target = f"{d.host}:{d.port}"
    code, out = await run(netsnmp_env, "snmpget", "-v1", "-c", "public", target, f"{RARITAN}.5.2.3.1.4.1.1.5")
    assert code == 0, out
    plant.inject("rpx-a01", "no_response")
    code, out = await run(netsnmp_env, "snmpget", "-v2c", "-c", "public", target, f"{RARITAN}.5.2.3.1.4.1.1.5")
    assert code != 0 and "Timeout" in out, out
    plant.clear("rpx-a01")
    plant.inject("rpx-a01", "near_overload")
    code, out = await run(netsnmp_env, "snmpget", "-v2c", "-c", "public", target, f"{RARITAN}.5.2.3.1.3.1.1.5")
    assert values(out)[f"{RARITAN}.5.2.3.1.3.1.1.5"] == "5", out  # aboveUpperWarning


async def test_serve_closes_its_sockets_when_cancelled(
    pdu_config: Config, plant: Plant, netsnmp_env: dict[str, str]
) -> None:
    from dcim.simulators.snmp import serve
    from tests.helpers import wait_until

    task = asyncio.create_task(serve(plant, pdu_config.devices))  # type: ignore[arg-type]

    async def answered() -> bool:
        code, _ = await run(netsnmp_env, "snmpget", *v2c(pdu_config, "apc-a01"), f"{APC}.4.3.1.5.1")
        return code == 0

    await wait_until(answered, timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    d = snmp_device(pdu_config, "apc-a01")
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=(d.host, d.port))  # the port is free again
    transport.close()


async def test_the_edges_of_the_community_agent(
    pdu_config: Config, plant: Plant, simulator: SnmpSimulator, netsnmp_env: dict[str, str]
) -> None:
    """v1/v2c PDUs are answered without pysnmp; what pysnmp's agent did at the edges still holds."""
    d = snmp_device(pdu_config, "apc-a01")
    target = f"{d.host}:{d.port}"
    # GETBULK asks for far more than an answer holds: at most MAX_BULK_VARBINDS come back, in OID order,
    # the table's end marked as endOfMibView.
    code, out = await run(netsnmp_env, "snmpbulkget", "-v2c", "-c", "public", "-Cn0", "-Cr1000", target, APC)
    lines = [line for line in out.splitlines() if line.startswith(".")]
    assert code == 0 and 0 < len(lines) <= MAX_BULK_VARBINDS, out
    got = [tuple(int(arc) for arc in line.split(" ", 1)[0].lstrip(".").split(".")) for line in lines]
    assert got == sorted(got)
    code, out = await run(netsnmp_env, "snmpgetnext", "-v2c", "-c", "public", target, "1.3.6.1.4.1.99999")
    assert "No more variables left in this MIB View" in out, out
    # v1: the end of the tree and a missing object are noSuchName errors.
    code, out = await run(netsnmp_env, "snmpgetnext", "-v1", "-c", "public", target, "1.3.6.1.4.1.99999")
    assert code != 0 and "noSuchName" in out, out
    code, out = await run(netsnmp_env, "snmpget", "-v1", "-c", "public", target, f"{APC}.4.3.1.99.1")
    assert code != 0 and "noSuchName" in out, out
    # v1 SET with the read community: noSuchName (v2c says noAccess), and nothing switched.
    code, out = await run(netsnmp_env, "snmpset", "-v1", "-c", "public", target, f"{APC}.9.2.4.1.5.4", "i", "2")
    assert code != 0 and "noSuchName" in out, out
    # A string where a command number belongs: wrongType, nothing switched.
    code, out = await run(netsnmp_env, "snmpset", *v2c(pdu_config, "apc-a01", "private"),
                          f"{APC}.9.2.4.1.5.4", "s", "off")
    assert code != 0 and "wrongType" in out, out
    assert not plant.racks["A01"].outlets_off["a"]
