"""A condition's `clear` (the engine's short cut for a rule with no alarm and no timer) answers what the
full verdict would: None where it has no verdict, True where no severity is past its threshold, False where
one is. Checked for every bound rule of a hall with the built-in packs and the three built-in kinds, over
a random run whose values often sit exactly on a threshold, go missing, stale or offline."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from dcim.rules.kinds import Assessment, Condition
from dcim.rules.kinds.rate import RateCondition
from dcim.rules.kinds.state import StateCondition
from dcim.rules.kinds.threshold import LimitCondition
from tests.rules.rig import Rig, hall
from tests.rules.test_tick_settled import RULES


def _check(r: Rig) -> tuple[int, int, int]:
    engine = r.service.engine
    now = r.clock.now_ns()
    seen = [0, 0, 0]  # None, True, False
    for bound in engine.bound:
        if bound.rule.only_if is not None:
            continue
        verdict = engine.verdict(bound, now, None)
        expected = None if verdict is None else verdict.severity is None
        got = bound.condition.clear(now)
        assert got is expected, f"{bound.key}: clear() says {got}, the verdict {verdict}"
        seen[0 if got is None else 1 if got else 2] += 1
    return seen[0], seen[1], seen[2]


@pytest.mark.parametrize("seed", [1, 2])
async def test_clear_answers_what_the_verdict_finds(tmp_path: Path, seed: int) -> None:
    r = Rig(hall(tmp_path, {"rules": RULES}))
    rng = random.Random(seed)
    totals = [0, 0, 0]
    for _ in range(150):
        r.clock.advance(1)
        for cdu in ("cdu-1", "cdu-2"):
            roll = rng.random()
            if roll < 0.05:
                r.status(cdu, False, "timed out")
                continue
            if roll < 0.1:
                continue  # a gap: the values go stale if it lasts
            setpoint = rng.choice((30.0, 32.0))
            # On the warning threshold (setpoint + 2) exactly, on the critical one, between, below, above.
            supply = setpoint + rng.choice((0.0, 1.9, 2.0, 2.1, 4.99, 5.0, 5.01, 8.0))
            values: dict[str, float | bool | str] = {
                "supply_temp_c": supply, "pump_fault": rng.random() < 0.2,
                "flow_lpm": rng.choice((450.0, 300.0, 0.0)),
                "return_temp_c": supply + rng.choice((5.0, 10.0, 15.0)),
            }
            if rng.random() < 0.8:
                values["supply_temp_setpoint_c"] = setpoint  # else: the threshold's reference is missing
            if rng.random() < 0.1:
                values["supply_temp_c"] = "n/a"  # a text where a number is expected: no number
            r.status(cdu, True)
            r.cdu(cdu, **values)
        for rack in ("A01", "A02", "B01", "B02", "C01", "C02"):
            kw = rng.choice((10.0, 40.0, 60.0, 72.0, 80.0, 95.0))
            r.feed(rack, kw, kw)
        r.service.tick()
        for i, n in enumerate(_check(r)):
            totals[i] += n
    # Every answer was seen many times: the check compared all three, not one.
    assert min(totals) > 50, totals


class _Clocked(LimitCondition):
    """An installed kind built on LimitCondition that judges in its own way."""

    def assess(self, now_ns: int) -> Assessment | None:
        return Assessment(0.0, [(s, 1.0, 0.0) for s in self.thresholds]) if now_ns > 10 * 10**9 else None


class _Scaled(LimitCondition):
    """An installed kind that changes only the value LimitCondition judges: its short cut still applies."""

    def value(self, now_ns: int) -> float | None:
        value = super().value(now_ns)
        return None if value is None else value * 2


def test_a_kind_with_its_own_assess_is_asked_through_it() -> None:
    assert LimitCondition.clear is not Condition.clear
    assert RateCondition.clear is LimitCondition.clear  # a rate judges its value(), as LimitCondition does
    assert StateCondition.clear is not Condition.clear
    assert _Clocked.clear is Condition.clear
    assert _Scaled.clear is LimitCondition.clear
