"""InfluxDB line protocol, the default MQTT payload (so Telegraf's mqtt_consumer reads it too).

    cdu,device=cdu-1,room=dh1,row=A,site=hall-1 supply_temp_c=32.1,flow_lpm=450.2,leak=false 1732250000000000000

One line per (measurement, tag set) of a batch; samples of other quality than good are left out of the
fields, and the line gets `quality="bad"` (or "stale") and the reason, so an outage shows in the database
as a record of the gap, not as silence.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from dcim.core.samples import Batch, Quality, Value

_TAG_ESCAPE = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n"})
_MEAS_ESCAPE = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n"})


def escape_tag(text: str) -> str:
    return text.translate(_TAG_ESCAPE)


def field_value(value: Value) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        # Integers are stored as floats: a register that reads 20 now and 20.5 after a profile change
        # must not flip the field's type (InfluxDB refuses a type change within a shard).
        return repr(float(value))
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    text = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def encode_batch(batch: Batch, static_tags: Iterable[tuple[str, str]]) -> list[str]:
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
        lines.append(f"{measurement.translate(_MEAS_ESCAPE)}{tag_text} {field_text} {batch.ts_ns}")
    return lines
