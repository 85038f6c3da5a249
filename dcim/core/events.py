"""What the rule engine tells the world: one `AlarmEvent` per change of an alarm's state.

The engine produces them; hooks (notifications), the MQTT publisher (retained alarm topics) and the
database (`alarm` measurement) consume them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Severity(enum.StrEnum):
    WARNING = "warning"
    CRITICAL = "critical"


class AlarmState(enum.StrEnum):
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    # Stable identity of the alarm: the same rule on the same subject is the same alarm across restarts
    # (PagerDuty's dedup key is derived from it).
    key: str
    rule: str
    subject: str  # rack id, or device id for device-scoped rules
    state: AlarmState
    severity: Severity
    ts_ns: int
    message: str
    metric: str = ""
    value: float | None = None
    threshold: float | None = None
    # site / room / row / rack / device / cdu ... for routing and grouping.
    labels: dict[str, str] = field(default_factory=dict)
    acknowledged: bool = False
    # True when the same alarm was already notified and this is a reminder (repeat interval).
    repeat: bool = False
    # Why its notifications are held back: "", "shelved", "maintenance", "inhibited by {alarm key}".
    suppressed: str = ""
