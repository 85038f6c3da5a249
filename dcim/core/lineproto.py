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


# Computed once and kept: the text before the fields of each series (measurement and sorted, escaped tags),
# keyed by (measurement, row tags, static tags), and each field name's escaped text with its `=`. A series
# is a device (or a table row of one), so both hold about as many entries as the site has series; they
# start again empty should they pass a bound, which only a site with that many series reaches.
_SERIES: dict[tuple[str, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]], str] = {}
_FIELD_NAMES: dict[str, str] = {}
_CACHE_MAX = 200_000
_GOOD = Quality.GOOD


def _series(measurement: str, row_tags: tuple[tuple[str, str], ...], base: tuple[tuple[str, str], ...]) -> str:
    key = (measurement, row_tags, base)
    text = _SERIES.get(key)
    if text is None:
        tags = sorted(base + row_tags)
        tag_text = "".join(f",{escape_tag(k)}={escape_tag(v)}" for k, v in tags if v != "")
        text = f"{measurement.translate(_MEAS_ESCAPE)}{tag_text}"
        if len(_SERIES) >= _CACHE_MAX:
            _SERIES.clear()
        _SERIES[key] = text
    return text


def _field_name(name: str) -> str:
    text = _FIELD_NAMES.get(name)
    if text is None:
        text = f"{escape_tag(name)}="
        if len(_FIELD_NAMES) >= _CACHE_MAX:
            _FIELD_NAMES.clear()
        _FIELD_NAMES[name] = text
    return text


def encode_batch(batch: Batch, static_tags: Iterable[tuple[str, str]]) -> list[str]:
    base = static_tags if isinstance(static_tags, tuple) else tuple(static_tags)
    groups: dict[tuple[str, tuple[tuple[str, str], ...]], list[str]] = {}
    worst: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[Quality, str]] = {}
    kind = batch.kind
    names = _FIELD_NAMES
    # A batch's samples mostly share their measurement and tags (the same objects, from one decode plan):
    # the group is looked up again only when they change.
    measurement: str | None = None
    tags: tuple[tuple[str, str], ...] | None = None
    fields: list[str] = []
    key: tuple[str, tuple[tuple[str, str], ...]] = ("", ())
    for sample in batch.samples:
        if sample.measurement is not measurement or sample.tags is not tags:
            measurement, tags = sample.measurement, sample.tags
            key = (measurement or kind, tags)
            found = groups.get(key)
            if found is None:
                found = groups[key] = []
            fields = found
        value = sample.value
        if sample.quality is _GOOD and value is not None:
            # The driver's text of the value (a float32's shortest digits), if it has one.
            encoded: str | None = sample.text
            if encoded:
                pass
            elif type(value) is float:
                # The common cases inline: a finite float is its repr, a flag its word.
                encoded = repr(value) if value - value == 0.0 else None
            elif value is True:
                encoded = "true"
            elif value is False:
                encoded = "false"
            else:
                encoded = field_value(value)
            if encoded is not None:
                name = names.get(sample.point)
                fields.append((name or _field_name(sample.point)) + encoded)
                continue
        previous = worst.get(key)
        if previous is None or (previous[0] is Quality.STALE and sample.quality is Quality.BAD):
            worst[key] = (sample.quality if sample.quality is not Quality.GOOD else Quality.BAD,
                          sample.reason or "no value")
    lines = []
    suffix = f" {batch.ts_ns}"
    for key, fields in groups.items():
        if key in worst:
            quality, reason = worst[key]
            reason_text = field_value(reason) or '""'
            fields = [*fields, f'quality="{quality.value}"', f"quality_reason={reason_text}"]
        lines.append(f"{_series(key[0], key[1], base)} {','.join(fields)}{suffix}")
    return lines
