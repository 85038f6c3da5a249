"""Jittered, capped exponential backoff for reconnect and retry loops."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, *, initial: float = 0.2, maximum: float = 30.0, factor: float = 2.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.attempt = 0

    def next(self) -> float:
        """The next delay: full jitter over an exponentially growing, capped window."""
        window = min(self.maximum, self.initial * self.factor ** self.attempt)
        self.attempt += 1
        return random.uniform(window / 2, window)

    def reset(self) -> None:
        self.attempt = 0
