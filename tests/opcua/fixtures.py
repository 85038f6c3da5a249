"""OPC UA test fixtures: a hall with one chiller, certificates made in a temp dir, a running simulator.

Import what a module needs (`from tests.opcua.fixtures import pki, ...`): pytest registers imported fixtures.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dcim.app.config import Config, parse_config
from dcim.core.samples import Sample
from dcim.drivers.opcua.config import OpcUaDevice
from dcim.drivers.opcua.security import make_certificate
from dcim.drivers.profiles import load_profile
from dcim.simulators.opcua import ChillerServer, ServerSecurity
from dcim.simulators.plant import Plant

SERVER_URI = "urn:dcim:simulator:chiller"
CLIENT_URI = "urn:dcim:client:test"


@dataclass(frozen=True)
class Pki:
    root: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    # What the client trusts (the server's certificate) and what the server trusts (the client's).
    client_trust: Path
    server_trust: Path
    rogue_cert: Path
    rogue_key: Path
    rogue_server_cert: Path
    rogue_server_key: Path


def make_pki(root: Path) -> Pki:
    server = make_certificate(root / "server.der", root / "server.key.pem", application_uri=SERVER_URI,
                              hostname="127.0.0.1", common_name="simulated chiller", server=True)
    client = make_certificate(root / "client.der", root / "client.key.pem", application_uri=CLIENT_URI,
                              hostname="127.0.0.1", common_name="dcim test client")
    rogue = make_certificate(root / "rogue.der", root / "rogue.key.pem", application_uri=CLIENT_URI,
                             hostname="127.0.0.1", common_name="rogue client")
    rogue_server = make_certificate(root / "rogue-server.der", root / "rogue-server.key.pem",
                                    application_uri=SERVER_URI, hostname="127.0.0.1",
                                    common_name="rogue chiller", server=True)
    (root / "client-trust").mkdir()
    (root / "server-trust").mkdir()
    shutil.copy(server.certificate, root / "client-trust" / "chiller.der")
    shutil.copy(client.certificate, root / "server-trust" / "dcim.der")
    return Pki(root, server.certificate, server.private_key, client.certificate, client.private_key,
               root / "client-trust", root / "server-trust", rogue.certificate, rogue.private_key,
               rogue_server.certificate, rogue_server.private_key)


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    root = Path(tempfile.mkdtemp(prefix="dcim-opcua-"))
    try:
        yield make_pki(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def hall(port: int, **chiller: Any) -> Config:
    """Two liquid racks on one CDU, rejecting their heat to one chiller on `port`."""
    device = {"id": "chiller-1", "kind": "chiller", "protocol": "opcua", "profile": "generic-chiller",
              "endpoint": f"opc.tcp://127.0.0.1:{port}", "timeout": "2s", "interval": "200ms",
              "publishing_interval": "100ms", "sampling_interval": "50ms", "watchdog_interval": "500ms",
              "reconnect_min": "200ms", "reconnect_max": "1s", **chiller}
    raw = {
        "site": {"id": "test"},
        "rooms": [{"id": "r1", "rows": [{"id": "A", "racks": [
            {"id": "A01", "cooling": "liquid", "power_budget_kw": 150, "cdu": "cdu-1"},
            {"id": "A02", "cooling": "liquid", "power_budget_kw": 150, "cdu": "cdu-1"},
        ]}]}],
        "devices": [
            {"id": "cdu-1", "kind": "cdu", "protocol": "modbus", "port": 1, "profile": "generic-cdu"},
            device,
        ],
    }
    return parse_config(raw)


def chiller(config: Config, device_id: str = "chiller-1") -> OpcUaDevice:
    device = config.device(device_id)
    assert isinstance(device, OpcUaDevice)
    return device


class Running:
    """A simulator serving one chiller, started as a task; `await stop()` cancels it."""

    def __init__(self, plant: Plant, device: OpcUaDevice, security: ServerSecurity | None = None) -> None:
        self.plant = plant
        self.device = device
        self.server = ChillerServer(plant, device, load_profile(device.profile), security=security, refresh=0.05)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> Running:
        self.task = asyncio.create_task(self.server.run(), name=f"sim-{self.device.id}")
        waiter = asyncio.create_task(self.server.running.wait())
        done, _ = await asyncio.wait((self.task, waiter), timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            if self.task.done():
                self.task.result()
            raise TimeoutError("the OPC UA simulator did not start")
        return self

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


@contextlib.asynccontextmanager
async def simulator(plant: Plant, device: OpcUaDevice, security: ServerSecurity | None = None
                    ) -> AsyncIterator[Running]:
    running = await Running(plant, device, security).start()
    try:
        yield running
    finally:
        await running.stop()


class Collector:
    """Records what a Subscriber emits; `latest(point)` is the newest sample of a point."""

    def __init__(self) -> None:
        self.batches: list[list[Sample]] = []
        self.statuses: list[tuple[bool, str]] = []

    def emit(self, samples: list[Sample]) -> None:
        self.batches.append(samples)

    def status(self, online: bool, error: str) -> None:
        self.statuses.append((online, error))

    @property
    def samples(self) -> list[Sample]:
        return [s for batch in self.batches for s in batch]

    def latest(self, point: str) -> Sample | None:
        for batch in reversed(self.batches):
            for sample in reversed(batch):
                if sample.point == point:
                    return sample
        return None


class BlackHoleProxy:
    """A TCP proxy that can stop forwarding without closing anything: a network cut as a client sees it
    (no FIN, no RST, just silence), which only a keepalive or watchdog can detect."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> BlackHoleProxy:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> None:
        self.flowing.clear()

    def mend(self) -> None:
        self.flowing.set()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.flowing.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()
