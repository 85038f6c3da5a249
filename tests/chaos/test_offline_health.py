"""Many devices that do not answer keep the daemon healthy: their pollers wait in line and poll, they are not
stuck.

Offline devices are polled a few at a time (`OFFLINE_POLLS_IN_FLIGHT`, 64 in the daemon), each poll as long
as its timeout, so that an outage of many never holds the others back. With more than about 190 of them
(64 x 3 periods / one timeout), a device waits longer than three periods for its turn, and its last poll is
older than that when its next one starts. The liveness check (`/healthz`, and the systemd watchdog that
follows the same verdict) took such a device for a stuck poller for the whole of its poll, so there were
always some: 503 for as long as the outage lasted, and under systemd a restart every WatchdogSec, blinding
the devices that still answered. Measured before the fix with 1,000 devices that never answer (bench_saturation
--answer-ms 10000): 503 on 99 probes of 118, each time the 64 in flight.

Here 16 devices (real Modbus TCP clients) talk to servers that accept and never answer, with 2 offline polls
at once: each waits about 4.5 s for its turn, well past its three periods (3 s).
"""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path

import yaml

from dcim.app.config import load_config
from dcim.app.poller import DeviceCoordinator, make_driver
from dcim.core.pipeline import Pipeline
from dcim.core.samples import Batch, DeviceStatus
from dcim.drivers.base import DriverContext
from dcim.drivers.profiles import load_profile
from tests.e2e.harness import cdu_rows
from tests.helpers import silent_servers

DEVICES = 16
OFFLINE_AT_ONCE = 2


class Counting:
    def __init__(self) -> None:
        self.batches: collections.Counter[str] = collections.Counter()
        self.progress = asyncio.Event()

    def on_batch(self, batch: Batch) -> None:
        self.batches[batch.device] += 1
        self.progress.set()

    def on_status(self, status: DeviceStatus) -> None:
        pass


async def test_devices_waiting_their_turn_to_time_out_are_not_stuck_pollers(tmp_path: Path) -> None:
    async with silent_servers(DEVICES) as ports:
        devices, rows = cdu_rows(DEVICES, "1s", timeout="500ms")
        for device, port in zip(devices, ports, strict=True):
            device["port"] = port
        path = tmp_path / "dcim.yaml"
        path.write_text(yaml.safe_dump({"site": {"id": "hall-1"}, "rooms": [{"id": "dh1", "rows": rows}],
                                        "devices": devices, "state_dir": str(tmp_path / "state")}))
        config = load_config(path)
        pipeline = Pipeline()
        pipeline.admission.max_offline_in_flight = OFFLINE_AT_ONCE
        sink = Counting()
        pipeline.add_sink(sink)
        context = DriverContext()
        coordinators = [DeviceCoordinator(d, make_driver(d, load_profile(d.profile), context), pipeline)
                        for d in config.devices]
        tasks = [asyncio.create_task(c.run(), name=c.name) for c in coordinators]
        # Each time a device was found polling after a wait that left its last poll more than three periods
        # behind (what the liveness check took for a stuck poller), with what the check said.
        long_waited: list[tuple[str, bool]] = []
        try:
            # Three polls of every device: its first (all at once, each timing out) and two in line.
            while min((sink.batches[c.device.id] for c in coordinators), default=0) < 3:
                now = time.monotonic()
                for c in coordinators:
                    period = max(c.device.interval, c.deadline)
                    polling = c.polling_since
                    # Polling for less than a period: let through just now, not a poll that hangs.
                    if polling is not None and now - polling < period and now - c.last_poll > 3 * period:
                        long_waited.append((c.device.id, c.stale(now)))
                assert all(not t.done() for t in tasks), [t for t in tasks if t.done()]
                await asyncio.sleep(0.05)
            assert all(c.online is False for c in coordinators)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    # The case came up (by design: each device waits about 4.5 s in line), and never counted as stuck.
    assert long_waited, "no device waited in line longer than three periods"
    assert not [device for device, stale in long_waited if stale], long_waited
