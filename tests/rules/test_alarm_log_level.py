"""The alarm log line's level follows what happened: a raised alarm is a warning (a critical one an error),
so a log filtered at warning shows every fault; a resolve is good news, at info."""

from __future__ import annotations

from structlog.testing import capture_logs

from tests.rules.rig import Rig
from tests.rules.test_inhibition import loop_down


def busy(rig: Rig) -> None:
    """A01 draws 140 kW of its 150 kW budget (over the 90 % warning), the rest as usual."""
    rig.healthy()
    rig.feed("A01", 70, 70)


def test_raise_logs_at_warning_or_error_and_resolve_at_info(rig: Rig) -> None:
    rig.run(5)
    with capture_logs() as logs:
        rig.run(45, lambda: busy(rig))
        loop_down(rig, 20)
        rig.run(180)
    alarms = [entry for entry in logs if entry["event"] == "alarm"]
    fired = {(e["key"], e["severity"]): e["log_level"] for e in alarms if e["state"] == "firing"}
    resolved = {e["key"]: e["log_level"] for e in alarms if e["state"] == "resolved"}
    # Both severities: the budget warns, the pump fault is critical.
    assert fired[("cdu-pump-fault/cdu-1", "critical")] == "error"
    assert fired[("liquid-rack-power-budget/A01", "warning")] == "warning"
    for (key, severity), level in fired.items():
        assert level == ("error" if severity == "critical" else "warning"), key
    # Everything the story raised resolved after the repair, each at info.
    assert {key for key, _ in fired} <= set(resolved)
    assert set(resolved.values()) == {"info"}
