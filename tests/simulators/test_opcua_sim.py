"""The OPC UA simulator seen by asyncua's own command-line tools (`uals`, `uaread`, `uawrite`) and by a
plain asyncua client: AnalogItemType nodes with EURange and EngineeringUnits, writes reaching the plant."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.object_ids import ObjectIds

from dcim.drivers.opcua.nodes import standard_node, string_node
from dcim.simulators.opcua import ServerSecurity, serve
from dcim.simulators.plant import Plant
from tests.helpers import free_port, wait_until
from tests.opcua.fixtures import Pki, Running, chiller, hall, pki, simulator

__all__ = ["pki"]

pytestmark = pytest.mark.asyncio(loop_scope="module")

BIN = Path(sys.executable).parent
NS = "urn:dcim:generic-chiller"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def sim() -> AsyncIterator[Running]:
    config = hall(free_port())
    async with simulator(Plant(config, frozen=True), chiller(config)) as running:
        yield running


async def tool(name: str, *args: str) -> str:
    # The simulator runs in this event loop: the tool must run without blocking it.
    proc = await asyncio.create_subprocess_exec(
        str(BIN / name), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, out.decode() + err.decode()
    return out.decode()


async def namespace_index(url: str) -> int:
    async with Client(url) as client:
        return await client.get_namespace_index(NS)


async def test_uals_browses_the_chiller(sim: Running) -> None:
    url = sim.device.endpoint
    idx = await namespace_index(url)
    out = await tool("uals", "-u", url, "-n", f"ns={idx};s=Chiller", "-l")
    for name in ("LeavingTemp", "EnteringTemp", "Setpoint", "Running", "Status", "Alarm", "DemandLimit",
                 "Power", "Cooling", "Cop"):
        assert f"{idx}:{name}" in out, out


async def test_uaread_reads_what_the_plant_serves(sim: Running) -> None:
    url = sim.device.endpoint
    idx = await namespace_index(url)
    out = await tool("uaread", "-u", url, "-n", f"ns={idx};s=Chiller.LeavingTemp")
    assert float(out.strip()) == sim.plant.values(sim.device.id)["leaving_temp_c"]
    out = await tool("uaread", "-u", url, "-n", f"ns={idx};s=Chiller.Status")
    assert int(out.strip()) == 1  # running, in the profile's enum


async def test_uawrite_changes_the_plant(sim: Running) -> None:
    url = sim.device.endpoint
    idx = await namespace_index(url)
    state = sim.plant.chillers[sim.device.id]
    try:
        await tool("uawrite", "-u", url, "-n", f"ns={idx};s=Chiller.DemandLimit", "-t", "double", "75")
        assert state.demand_limit_pct == 75.0
    finally:
        state.demand_limit_pct = 100.0


async def test_analog_items_carry_eurange_and_engineering_units(sim: Running) -> None:
    async with Client(sim.device.endpoint) as client:
        idx = await client.get_namespace_index(NS)
        node = client.get_node(string_node("Chiller.LeavingTemp", idx))
        type_definition = await node.read_type_definition()
        assert type_definition == standard_node(ObjectIds.AnalogItemType)
        eu_range = await (await node.get_child("0:EURange")).read_value()
        assert (eu_range.Low, eu_range.High) == (-10.0, 60.0)
        units = await (await node.get_child("0:EngineeringUnits")).read_value()
        assert units.UnitId == 4408652 and units.DisplayName.Text == "°C"
        power = await client.nodes.objects.get_child([f"{idx}:Chiller", f"{idx}:Power"])
        assert (await (await power.get_child("0:EngineeringUnits")).read_value()).UnitId == 4937556
        assert await power.read_data_type_as_variant_type() == ua.VariantType.Double


async def test_serve_runs_every_device_and_closes_its_sockets_when_cancelled(pki: Pki) -> None:
    port = free_port()
    config = hall(port)
    security = ServerSecurity(pki.server_cert, pki.server_key, trust_list=pki.server_trust)
    task = asyncio.create_task(serve(Plant(config, frozen=True), [chiller(config)], security=security))

    async def endpoints() -> list[ua.EndpointDescription]:
        return await Client(f"opc.tcp://127.0.0.1:{port}").connect_and_get_server_endpoints()

    found = await wait_until(endpoints, timeout=30, ignore=(OSError,))
    modes = {(e.SecurityPolicyUri.rsplit("#", 1)[-1], e.SecurityMode.name) for e in found}
    assert modes == {("None", "None_"), ("Basic256Sha256", "Sign"), ("Basic256Sha256", "SignAndEncrypt")}
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
