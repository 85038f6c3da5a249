"""InfluxDB line protocol, the default MQTT payload (so Telegraf's mqtt_consumer reads it too).

    cdu,device=cdu-1,room=dh1,row=A,site=hall-1 supply_temp_c=32.1,flow_lpm=450.2,leak=false 1732250000000000000

One line per (measurement, tag set) of a batch; samples of other quality than good are left out of the
fields, and the line gets `quality="bad"` (or "stale") and the reason, so an outage shows in the database
as a record of the gap, not as silence.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from operator import add, attrgetter

from dcim.core.samples import Batch, Layout, Quality, Value

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
    layout = batch.layout
    if layout is not None and layout.texts and len(batch.samples) == len(layout.points):
        return _encode_laid_out(batch, layout, base)
    return _encode_samples(batch, base)


def _encode_samples(batch: Batch, base: tuple[tuple[str, str], ...]) -> list[str]:
    """`encode_batch` sample by sample (the general way)."""
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


_TEXT = attrgetter("text")
# Per layout (`Layout.encodings`): its groups of points by measurement, and each device's lines' heads.
LaidOutGroups = tuple[tuple[str, tuple[str, ...], tuple[int, ...]], ...]


def _encode_laid_out(batch: Batch, layout: Layout, base: tuple[tuple[str, str], ...]) -> list[str]:
    """`encode_batch` of a batch laid out as `layout` says (every sample GOOD with a value, no row tags) whose
    values come with their texts (`Layout.texts`): the same lines, from each line's field names worked out
    once (a join, no test a sample)."""
    encodings = layout.encodings
    key = (batch.kind, base)
    heads = encodings.get(key)
    if heads is None:
        groups = encodings.get(batch.kind)
        if groups is None:
            groups = encodings[batch.kind] = _laid_out_groups(layout, batch.kind)
        if len(encodings) >= _CACHE_MAX:
            encodings.clear()
            encodings[batch.kind] = groups
        heads = encodings[key] = tuple((f"{_series(measurement, (), base)} ", names, indexes)
                                       for measurement, names, indexes in groups)
    samples = batch.samples
    texts: list[str | None] = list(map(_TEXT, samples))
    if not all(texts):
        # A float32 whose digits need an exponent (1e7 and up, below 1e-4) comes without its text: its repr,
        # as the general way writes a float. Anything else without a text (not a float, not finite: no driver
        # lays such a batch out with texts) sends the batch the general way.
        texts = [text or (repr(value) if type(value := sample.value) is float and value - value == 0.0 else None)
                 for text, sample in zip(texts, samples, strict=True)]
        if None in texts:
            return _encode_samples(batch, base)
    suffix = f" {batch.ts_ns}"
    if len(heads) == 1:
        head, names, _ = heads[0]
        return [head + ",".join(map(add, names, texts)) + suffix]
    return [head + ",".join([name + texts[i] for name, i in zip(names, indexes, strict=True)]) + suffix
            for head, names, indexes in heads]


def _laid_out_groups(layout: Layout, kind: str) -> LaidOutGroups:
    """The layout's points by line (measurement, the device kind for none), in the order `encode_batch` makes
    its lines: each line's measurement, its fields' names with their `=`, and its points' places."""
    groups: dict[str, tuple[list[str], list[int]]] = {}
    for i, (point, measurement) in enumerate(zip(layout.points, layout.measurements, strict=True)):
        names, indexes = groups.setdefault(measurement or kind, ([], []))
        names.append(_field_name(point))
        indexes.append(i)
    return tuple((measurement, tuple(names), tuple(indexes)) for measurement, (names, indexes) in groups.items())
