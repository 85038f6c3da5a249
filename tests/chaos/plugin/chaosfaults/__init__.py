"""chaosfaults: a protocol plugin whose driver misbehaves, for the chaos tests (tests/chaos/faults.py).

Installed the way pip installs any protocol plugin: this directory holds the package and its
`dcim_chaos_faults-1.0.dist-info` (METADATA, entry_points.txt naming `PROTOCOL` in the group
`dcim.protocols`); a daemon started with this directory on PYTHONPATH finds it through the protocol
registry, and nothing in the product knows it exists.

    mode: raise   every read raises RuntimeError, as a driver bug would (supervision must hold)
    mode: stuck   the first read swallows the poll deadline's cancellation, as a library with the gh-86296
                  bug does, and hangs; the next cancellation (shutdown) goes through. The poller is then
                  stuck and /healthz must say so.
    mode: block   a read that finds the file `trigger` removes it and blocks the whole event loop for
                  `block_seconds` (a synchronous call, as a library doing blocking I/O would): the daemon's
                  main loop is wedged and the systemd watchdog must stop pinging. Otherwise it raises.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Literal

from dcim.core.samples import Sample, Value
from dcim.drivers.base import DeviceBase, Driver, DriverContext
from dcim.drivers.profiles import PointBase, Profile
from dcim.drivers.registry import ProtocolSpec


class FaultyDevice(DeviceBase):
    protocol: Literal["chaosfault"]
    mode: Literal["raise", "stuck", "block"] = "raise"
    trigger: str | None = None  # mode block: the file whose appearance makes the next read block
    block_seconds: float = 2.0


class FaultyPoint(PointBase):
    pass


class FaultyDriver(Driver):
    def __init__(self, device: FaultyDevice, profile: Profile[Any]) -> None:
        super().__init__(device, profile)
        self.mode = device.mode
        self.faulty = device
        self.reads = 0

    async def connect(self) -> None:
        pass

    async def read(self) -> list[Sample]:
        self.reads += 1
        if self.mode == "block":
            trigger = Path(self.faulty.trigger) if self.faulty.trigger else None
            if trigger is not None and trigger.exists():
                trigger.unlink()
                time.sleep(self.faulty.block_seconds)  # noqa: ASYNC251 - blocking on purpose: the wedged loop
        if self.mode in ("raise", "block"):
            raise RuntimeError(f"chaosfault driver bug: read {self.reads} of {self.device.id} raises")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass  # swallowed, on purpose: the bug this mode stands for
        await asyncio.Event().wait()
        return []

    async def write(self, point: str, value: Value) -> None:
        raise RuntimeError(f"chaosfault driver bug: write {point} of {self.device.id} raises")

    async def close(self) -> None:
        pass


def make_driver(device: DeviceBase, profile: Profile[Any], context: DriverContext) -> Driver:
    if not isinstance(device, FaultyDevice):
        raise TypeError(f"{device.id}: not a chaosfault device")
    return FaultyDriver(device, profile)


PROTOCOL = ProtocolSpec(
    name="chaosfault",
    title="chaosfault (tests only)",
    device=FaultyDevice,
    point=FaultyPoint,
    driver="chaosfaults:make_driver",
)
