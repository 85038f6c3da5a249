"""encode_batch with its series and field-name texts kept from batch to batch gives the same lines as the
straightforward encoding (the reference below, as it was before they were kept), for any mix of samples."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

from dcim.core import lineproto
from dcim.core.lineproto import encode_batch, escape_tag, field_value
from dcim.core.samples import Batch, Quality, Sample, Value


def reference(batch: Batch, static_tags: Iterable[tuple[str, str]]) -> list[str]:
    base = tuple(static_tags)
    groups: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[str, str]]] = {}
    worst: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[Quality, str]] = {}
    for sample in batch.samples:
        key = (sample.measurement or batch.kind, sample.tags)
        fields = groups.setdefault(key, [])
        if sample.quality is Quality.GOOD and sample.value is not None:
            encoded = field_value(sample.value)
            if encoded is not None:
                fields.append((sample.point, encoded))
                continue
        previous = worst.get(key)
        if previous is None or (previous[0] is Quality.STALE and sample.quality is Quality.BAD):
            worst[key] = (sample.quality if sample.quality is not Quality.GOOD else Quality.BAD,
                          sample.reason or "no value")
    lines = []
    for key, fields in groups.items():
        measurement, row_tags = key
        tags = sorted(base + row_tags)
        tag_text = "".join(f",{escape_tag(k)}={escape_tag(v)}" for k, v in tags if v != "")
        if key in worst:
            quality, reason = worst[key]
            fields = [*fields, ("quality", f'"{quality.value}"'), ("quality_reason", field_value(reason) or '""')]
        field_text = ",".join(f"{escape_tag(name)}={value}" for name, value in fields)
        lines.append(f"{measurement.translate(lineproto._MEAS_ESCAPE)}{tag_text} {field_text} {batch.ts_ns}")
    return lines


VALUES: list[Value | None] = [1.5, -0.0, 0.1, 1e300, math.inf, -math.inf, math.nan, 3, -7, True, False, "on",
                              'say "hi"\n', "", None, 22.400000000000002]
NAMES = ["supply_temp_c", "a b", "x,y", "k=v", "leak"]


def test_kept_series_give_the_same_lines_as_the_reference() -> None:
    rng = random.Random(3)
    for round_ in range(3000):
        if round_ == 1500:
            lineproto._SERIES.clear()  # and once more after the texts were dropped
        samples = []
        for _ in range(rng.randrange(0, 8)):
            quality = rng.choice([Quality.GOOD, Quality.GOOD, Quality.STALE, Quality.BAD])
            tags = rng.choice([(), (("outlet", "7"),), (("phase", "L 1"),), (("z", ""),)])
            samples.append(Sample("dev-1", rng.choice(NAMES), rng.choice(VALUES), 1, quality,
                                  rng.choice(["", "timeout", 'bad "x"']), rng.choice(["", "pdu_outlet", "a,b c"]),
                                  tags))
        batch = Batch("dev-1", rng.choice(["cdu", "pdu"]), 1732250000000000000 + round_, samples)
        static = rng.choice([(("site", "hall 1"), ("device", "dev-1")), (("site", "s"), ("rack", "A,1"))])
        assert encode_batch(batch, static) == reference(batch, static)
        assert encode_batch(batch, list(static)) == reference(batch, static)
