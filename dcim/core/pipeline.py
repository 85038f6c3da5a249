"""The in-process fan-out between drivers and everything downstream. It does no I/O of its own.

Sinks are called synchronously, in the order they were added, and must not block: a sink that does I/O
(the MQTT publisher) only appends to its own outbox and wakes its own task. The rule engine is added
first, so rules see every sample before MQTT does and a broker outage never blinds enforcement.
"""

from __future__ import annotations

import time
from typing import Protocol

import structlog

from dcim.core.samples import Batch, DeviceStatus

log = structlog.get_logger(__name__)


class Sink(Protocol):
    def on_batch(self, batch: Batch) -> None: ...

    def on_status(self, status: DeviceStatus) -> None: ...


class Pipeline:
    def __init__(self) -> None:
        self._sinks: list[Sink] = []
        self.batches = 0
        self.samples = 0
        self.sink_errors = 0
        self.last_publish = time.monotonic()

    def add_sink(self, sink: Sink) -> None:
        self._sinks.append(sink)

    def publish(self, batch: Batch) -> None:
        self.batches += 1
        self.samples += len(batch.samples)
        self.last_publish = time.monotonic()
        for sink in self._sinks:
            try:
                sink.on_batch(batch)
            except Exception:
                # One faulty sink must not starve the others (rules above all).
                self.sink_errors += 1
                log.exception("sink failed", sink=type(sink).__name__, device=batch.device)

    def status(self, status: DeviceStatus) -> None:
        for sink in self._sinks:
            try:
                sink.on_status(status)
            except Exception:
                self.sink_errors += 1
                log.exception("sink failed", sink=type(sink).__name__, device=status.device)
