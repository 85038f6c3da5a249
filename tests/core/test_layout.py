"""A batch's layout (`Layout`): a driver's word that a poll's samples are its plan's points in order, each GOOD
with a value. The sinks that use it (the rules' readings of a device no rule judges, the console's live view,
the poller's known series, the line protocol) must keep and send exactly what they keep and send from the
same batches without it. Checked over random runs that mix laid-out batches with the same samples unmarked,
partial and BAD batches, table rows, a second layout, a layout whose batch is not its length, values of every
type (one with no text, one that is not finite), and a device that rules judge."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest

from dcim.app.console.live import LiveState
from dcim.app.poller import DeviceCoordinator
from dcim.core.lineproto import encode_batch
from dcim.core.pipeline import Pipeline
from dcim.core.samples import Batch, Layout, Quality, Sample
from dcim.drivers.base import Driver
from dcim.drivers.errors import DeviceTimeout
from dcim.drivers.profiles import load_profile
from dcim.rules.metrics import Readings
from tests.e2e.harness import Recorder
from tests.rules.rig import Rig, hall, make_config
from tests.rules.test_readings_inline import _kept
from tests.rules.test_tick_settled import RULES

# Three lines a batch: "meter" points, points of the device's kind (no measurement), and a table of its own.
# A layout whose values come with their texts (encoded from the layout, unless a value has none after all),
# and one whose values do not (encoded the general way).
LAYOUT = Layout(("power_w", "energy_kwh", "voltage_v", "running", "state", "current_a", "frequency_hz"),
                ("meter", "meter", "", "meter", "", "meter_extra", "meter"), texts=True)
OTHER = Layout(("frequency_hz", "power_w"), ("meter", "meter"))
# (value, text): a float32's digits with its text, and values that come without one.
TEXTS = [(230.5, "230.5"), (230.41718, "230.41718"), (0.1, "0.1"), (-0.0, "-0.0"), (12345678.0, ""), (1e-05, "")]
VALUES = [*TEXTS, (1.0, ""), (7, ""), (True, ""), (False, ""), ("run", ""), ('say "hi"', "")]


def _good(rng: random.Random, device: str, layout: Layout, ts: int) -> list[Sample]:
    samples = []
    texts = layout.texts and rng.random() < 0.9  # now and then a value without its text all the same
    for point, measurement in zip(layout.points, layout.measurements, strict=True):
        value, text = rng.choice(TEXTS if texts else VALUES)
        if rng.random() < 0.02:
            value, text = rng.choice((math.nan, math.inf)), ""  # a value with no line protocol text
        samples.append(Sample(device, point, value, ts, Quality.GOOD, "", measurement, (), text))
    return samples


def _batches(rng: random.Random, device: str, kind: str, ts: int) -> tuple[Batch, str]:
    """One batch of a random run, and what kind it is."""
    roll = rng.random()
    if roll < 0.55:
        return Batch(device, kind, ts, _good(rng, device, LAYOUT, ts), LAYOUT), "laid"
    if roll < 0.65:
        return Batch(device, kind, ts, _good(rng, device, LAYOUT, ts)), "unmarked"
    if roll < 0.72:
        return Batch(device, kind, ts, _good(rng, device, OTHER, ts), OTHER), "other"
    if roll < 0.76:
        # A layout whose batch is not its length (no driver sends one): taken the general way.
        return Batch(device, kind, ts, _good(rng, device, OTHER, ts), LAYOUT), "short"
    if roll < 0.86:
        # The plant's metrics of the same device (another measurement; one point of the same name as a laid-out
        # one), good or withdrawn: they leave what is kept for the layout alone, unless they withdraw one of
        # its readings.
        samples = [Sample(device, point, value, ts, Quality.GOOD if value is not None else Quality.BAD,
                          "" if value is not None else "no data", "plant")
                   for point, value in (("approach_k", rng.choice((3.5, None))),
                                        ("power_w", rng.choice((1.5, 1.5, None))))]
        return Batch(device, kind, ts, samples), "plant"
    samples = []
    for point, measurement in zip(LAYOUT.points, LAYOUT.measurements, strict=True):
        pick = rng.random()
        if pick < 0.3:
            continue  # not in this batch
        if pick < 0.6:
            samples.append(Sample(device, point, None, ts, rng.choice((Quality.BAD, Quality.STALE)), "timed out",
                                  measurement))
        else:
            value, text = rng.choice(VALUES)
            samples.append(Sample(device, point, value, ts, Quality.GOOD, "", measurement, (), text))
    if rng.random() < 0.5:
        samples.append(Sample(device, "current_a", rng.choice((3.5, None)), ts, Quality.GOOD, "", "meter_outlet",
                              (("outlet", str(rng.randrange(1, 4))),)))
    return Batch(device, kind, ts, samples), "partial"


def _unmarked(batch: Batch) -> Batch:
    return Batch(batch.device, batch.kind, batch.ts_ns, batch.samples)


def _live(state: LiveState) -> dict[str, Any]:
    return {device: ({key: (repr(s.value), s.ts_ns, s.quality, s.reason, s.measurement)
                      for key, s in live.samples.items()}, live.bad, live.reason, live.batch_ns)
            for device, live in state.devices.items()}


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_the_live_view_and_the_line_protocol_are_the_same_with_a_layout_or_without(seed: int) -> None:
    rng = random.Random(seed)
    marked, plain = LiveState(), LiveState()
    kinds: dict[str, int] = {}
    primed = 0
    for step in range(600):
        device = rng.choice(("meter-1", "meter-2"))
        batch, what = _batches(rng, device, "pdu", 1_000 + step)
        kinds[what] = kinds.get(what, 0) + 1
        kept = marked.devices.get(device)
        if what == "laid" and kept is not None and kept.laid_out is not None and kept.laid_out[0] is LAYOUT:
            primed += 1  # this batch takes the way of a batch like the last
        marked.on_batch(batch)
        plain.on_batch(_unmarked(batch))
        assert _live(marked) == _live(plain), (step, what)
        tags = (("device", device), ("site", "hall-1"), ("row", "A" if device == "meter-1" else "B"))
        assert encode_batch(batch, tags) == encode_batch(_unmarked(batch), tags), (step, what)
    assert primed > 100 and min(kinds.values()) > 5, (primed, kinds)
    assert LAYOUT.encodings  # the laid-out batches were encoded from the layout's field names


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_rules_readings_are_the_same_with_a_layout_or_without(tmp_path: Path, seed: int) -> None:
    # meter-1 is a device no rule names and no rack has; pdu-A01-a feeds a rack (its readings make the rack's
    # metrics); cdu-1 is judged by the rules (its batches go the rules' way, layout or not).
    r = Rig(hall(tmp_path, {"rules": RULES}))
    engine = r.service.engine
    shadow = Readings(engine.readings.stale_after_ns)
    rng = random.Random(seed)
    primed = 0
    for step in range(400):
        r.clock.advance(rng.choice((1, 1, 1, 30)))
        now = r.clock.now_ns()
        device = rng.choice(("meter-1", "meter-1", "pdu-A01-a", "cdu-1"))
        batch, what = _batches(rng, device, "pdu" if device != "cdu-1" else "cdu", now)
        laid_out = engine.readings.laid_out.get(device)
        if what == "laid" and laid_out is not None and laid_out[0] is LAYOUT:
            primed += 1
        r.pipeline.publish(batch)
        shadow.update(_unmarked(batch))
        assert _kept(engine.readings) == _kept(shadow), (step, what, device)
        if rng.random() < 0.1:
            r.service.tick()
            for derived in r.published:
                if derived.kind not in ("alarm", "pdu", "cdu"):
                    shadow.update(derived)
            r.published.clear()
    assert primed > 50, primed
    assert "cdu-1" not in engine.readings.laid_out  # a device the rules judge keeps none


class Scripted(Driver):
    """A driver whose reads return what the test hands it (samples and layout), or fail."""

    def __init__(self) -> None:
        config = make_config(hall(Path("/nonexistent")))
        device = next(d for d in config.devices if d.id == "cdu-1")
        super().__init__(device, load_profile("generic-cdu"))
        self.next: tuple[list[Sample], Layout | None] | None = None
        self.last_layout: Layout | None = None

    async def connect(self) -> None:
        pass

    async def read(self) -> list[Sample]:
        assert self.next is not None
        samples, layout = self.next
        self.last_layout = None
        if not samples:
            raise DeviceTimeout("cdu-1: no answer")
        self.last_layout = layout
        return samples

    async def write(self, point: str, value: Any) -> None:
        raise AssertionError("no writes here")

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("seed", [1, 2])
async def test_the_pollers_known_series_and_failed_polls_are_the_same_with_a_layout_or_without(seed: int) -> None:
    # After a failed poll the device's series known so far are sent BAD: the same whether the polls that made
    # them known were marked with a layout (known by the layout once) or not (known point by point).
    rng = random.Random(seed)
    drivers, recorders, coordinators = [], [], []
    for _ in range(2):
        driver, recorder, pipeline = Scripted(), Recorder(), Pipeline()
        pipeline.add_sink(recorder)
        drivers.append(driver)
        recorders.append(recorder)
        coordinators.append(DeviceCoordinator(driver.device, driver, pipeline))
    marked, plain = coordinators
    failed = 0
    for step in range(200):
        roll = rng.random()
        if roll < 0.1:
            samples: list[Sample] = []  # the poll fails
            failed += 1
            layout = None
        else:
            batch, _ = _batches(rng, "cdu-1", "cdu", step)
            samples, layout = batch.samples, batch.layout
        drivers[0].next = (samples, layout)
        drivers[1].next = (samples, None)
        got = await marked.poll_once()
        want = await plain.poll_once()
        assert got.layout is (layout if samples else None)
        assert want.layout is None
        if samples:
            assert got.samples == want.samples, step
        assert marked._last_keys == plain._last_keys, step
        if not samples:
            assert [(s.point, s.measurement, s.tags, s.quality) for s in got.samples] == \
                [(s.point, s.measurement, s.tags, s.quality) for s in want.samples]
    assert failed > 5 and any(b.layout is LAYOUT for b in recorders[0].batches["cdu-1"])
