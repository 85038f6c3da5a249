"""Jittered, capped exponential backoff for reconnect and retry loops (MQTT, ingest, Modbus, OPC UA)."""

from __future__ import annotations

import random


class Backoff:
    """Delays `initial`, 2 x `initial`, ... up to `maximum`, each drawn in [delay/2, delay] so that many
    clients cut off together do not come back in lockstep."""

    def __init__(self, *, initial: float = 0.2, maximum: float = 30.0, factor: float = 2.0,
                 rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.failures = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        """The delay after one more failure."""
        window = min(self.maximum, self.initial * self.factor ** min(self.failures, 64))
        self.failures += 1
        return window * (0.5 + self._rng.random() / 2)

    def reset(self) -> None:
        self.failures = 0
