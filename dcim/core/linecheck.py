"""Checks for what arrives from outside: line protocol lines and the JSON payload, before anything can raise.

    limits = Limits(now_ns=time.time_ns())
    line, reason = check_line(b"cdu,device=cdu-1 flow_lpm=450.2 1732250000000000000", limits)
    lines = json_lines(payload, limits)        # raises Invalid(reason) for a message that is unusable

`check_line` answers (normalised line, None) for a line the database will take, or (None, reason) for one it
would refuse or that makes no sense as telemetry: a syntax error, a reserved name, a duplicated tag, a number
that is not finite or out of its type's range, a string field too long, a timestamp outside sane bounds. The
grammar is InfluxDB's (1.x, 2.x and 3.x agree on it); where the databases differ the check takes the strict
side, so after it a database refuses a line only for what the check cannot know: a field whose type conflicts
with what is already stored.

`json_lines` reads the publisher's JSON payload option (`{"device", "kind", "ts", "tags", "samples": [...]}`)
and checks its structure and every value's type before a single line is built; the lines it builds pass
`check_line` as well. Every check works on bytes with compiled patterns, so a 10 MB message of junk costs a
fraction of a second and not one round trip to the database.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from dcim.core.lineproto import encode_batch
from dcim.core.samples import Batch, Quality, Sample

# Names (measurement, tag keys and values, field keys): no control character; `\` escapes the next byte, as
# in the database's own parser. Tag and field names may not hold an unescaped `,`, `=` or space. Possessive
# quantifiers keep every pattern linear on junk.
_NAME = rb"(?:[^\\,= \x00-\x1f\x7f]++|\\[^\x00-\x1f\x7f])++"
_MEASUREMENT = rb"(?:[^\\,= #\x00-\x1f\x7f]|\\[^\x00-\x1f\x7f])(?:[^\\, \x00-\x1f\x7f]++|\\[^\x00-\x1f\x7f])*+"
_STRING = rb'"(?:[^"\\]++|\\.)*+"'
_NUMBER = rb"-?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
_STRICT = (rb"(?:" + _STRING + rb"|-?[0-9]{1,20}i|[0-9]{1,21}u|" + _NUMBER
           + rb"|t|T|true|True|TRUE|f|F|false|False|FALSE)(?=[, ]|$)")
_LOOSE = rb"(?:" + _STRING + rb'|[^",\s\\][^,\s]*+)'


def _line_pattern(value: bytes) -> re.Pattern[bytes]:
    field = rb"(?:" + _NAME + rb")=(?:" + value + rb")"
    return re.compile(
        rb"(" + _MEASUREMENT + rb")((?:," + _NAME + rb"=" + _NAME + rb")*) +(" + field + rb"(?:," + field + rb")*)"
        rb"(?: +(-?[0-9]{1,19}))?", re.DOTALL,
    )


# Values in their type's grammar; a line that fails it is read again with any bare token as a value, to
# tell a bad value from broken syntax in the drop counter.
_LINE = _line_pattern(_STRICT)
_LINE_LOOSE = _line_pattern(_LOOSE)
_TAG_PAIR = re.compile(rb",(" + _NAME + rb")=" + _NAME, re.DOTALL)
_FIELD_PAIR = re.compile(rb"(" + _NAME + rb")=(" + _LOOSE + rb")", re.DOTALL)
_BOOLEANS = frozenset((b"t", b"T", b"true", b"True", b"TRUE", b"f", b"F", b"false", b"False", b"FALSE"))
# `time` is refused by InfluxDB 1.x as a tag or field key, `_measurement` and `_field` by 2.x.
_RESERVED = frozenset((b"time", b"_measurement", b"_field"))
_WHITESPACE = b" \t\r"

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64_MAX = 2**64 - 1
# The lowest timestamp taken as telemetry: 2000-01-01T00:00:00Z. Anything before is a clock that was never set.
MIN_TS_NS = 946_684_800 * 10**9
# InfluxDB's own upper bound (2262-04-11): past it a timestamp cannot be stored at all.
MAX_TS_NS = 9_223_372_036_854_775_806
MAX_STRING_BYTES = 64 * 1024


class Invalid(ValueError):
    """A message that is unusable as a whole; `reason` is a short label for the drop counter."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Limits:
    # Timestamps later than now + max_ahead_ns are a clock gone wrong, not telemetry.
    now_ns: int
    max_ahead_ns: int = 86_400 * 10**9
    max_line_bytes: int = 64 * 1024
    # InfluxDB before 2.x has no unsigned integers (`u` suffix).
    unsigned: bool = True
    # JSON payload: nesting (the publisher's format needs 4), samples per message, names and strings.
    max_depth: int = 8
    max_samples: int = 100_000
    max_tags: int = 64
    max_name: int = 256

    @property
    def max_ts_ns(self) -> int:
        return min(MAX_TS_NS, self.now_ns + self.max_ahead_ns)


def check_line(line: bytes, limits: Limits) -> tuple[bytes | None, str | None]:
    """(line stripped of surrounding blanks, None) if the database will take it; (None, reason) if not.

    A blank line or a comment (`#...`) answers (None, None): nothing to write, nothing wrong.
    """
    line = line.strip(_WHITESPACE)
    if not line or line.startswith(b"#"):
        return None, None
    if len(line) > limits.max_line_bytes:
        return None, "line_too_long"
    match = _LINE.fullmatch(line)
    if match is None:
        return None, "bad_value" if _LINE_LOOSE.fullmatch(line) else "syntax"
    tags, fields, ts = match.group(2, 3, 4)
    if tags:
        keys = _TAG_PAIR.findall(tags)
        if len(set(keys)) != len(keys):
            return None, "duplicate_tag"
        if not _RESERVED.isdisjoint(keys):
            return None, "reserved_name"
    for key, value in _FIELD_PAIR.findall(fields):
        if key in _RESERVED:
            return None, "reserved_name"
        reason = _check_value(value, limits)
        if reason is not None:
            return None, reason
    if ts is not None and not MIN_TS_NS <= int(ts) <= limits.max_ts_ns:
        return None, "timestamp"
    return line, None


def _check_value(value: bytes, limits: Limits) -> str | None:
    """The range of a value already in its type's grammar (the common short float costs two tests)."""
    last = value[-1]
    if last == 0x22:  # '"': a string field, only its length can be wrong
        return "string_too_long" if len(value) - 2 > MAX_STRING_BYTES else None
    if last == 0x69:  # 'i'
        return None if len(value) < 19 or INT64_MIN <= int(value[:-1]) <= INT64_MAX else "out_of_range"
    if last == 0x75:  # 'u'
        if not limits.unsigned:
            return "bad_value"
        return None if len(value) < 20 or int(value[:-1]) <= UINT64_MAX else "out_of_range"
    if len(value) > 15 or b"e" in value or b"E" in value:
        # 1e400, or 400 digits, is well formed and infinite: the database refuses it.
        return None if value in _BOOLEANS or math.isfinite(float(value)) else "not_finite"
    return None


# ---- the JSON payload option ------------------------------------------------------------------------

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_INNERMOST = re.compile(rb"\[\]|\{\}")
_QUALITIES = frozenset(q.value for q in Quality)


def json_nesting(raw: bytes, max_depth: int) -> str | None:
    """None if the JSON text nests no deeper than `max_depth`, else a reason; found without recursion.

    json.loads recurses once per level, so depth is checked first: strings are cut out, only brackets are
    kept, and each pass removes the innermost pairs. Pairs left after `max_depth` passes mean deeper nesting;
    brackets left without a pair mean they do not balance.
    """
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    for _ in range(max_depth):
        if not brackets:
            return None
        brackets = _INNERMOST.sub(b"", brackets)
    if not brackets:
        return None
    return "json_too_deep" if _INNERMOST.search(brackets) else "json_syntax"


def _reject_constant(name: str) -> Any:
    raise Invalid("not_finite", f"{name} is not a number JSON allows")


def _name(data: dict[str, Any], key: str, limits: Limits, *, optional: bool = False) -> str | None:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= limits.max_name:
        raise Invalid("json_schema", f"{key!r} must be a non-empty string of at most {limits.max_name} characters")
    return value


def _tags(value: Any, where: str, limits: Limits) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or len(value) > limits.max_tags:
        raise Invalid("json_schema", f"{where} must be an object of at most {limits.max_tags} string tags")
    for k, v in value.items():
        if not isinstance(v, str) or not 0 < len(k) <= limits.max_name or len(v) > limits.max_name:
            raise Invalid("json_schema", f"{where}: tag {k[:40]!r} must map a name to a string")
    return tuple(sorted(value.items()))


def _value(value: Any, where: str) -> float | int | bool | str | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise Invalid("out_of_range", f"{where}: integer out of range")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Invalid("not_finite", f"{where}: value is not finite")
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING_BYTES:
            raise Invalid("string_too_long", f"{where}: string longer than {MAX_STRING_BYTES}")
        return value
    raise Invalid("json_schema", f"{where}: value must be a number, a boolean, a string or null")


def _timestamp(value: Any, limits: Limits) -> int:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid("json_schema", "'ts' must be an integer (nanoseconds)")
    if not MIN_TS_NS <= value <= limits.max_ts_ns:
        raise Invalid("timestamp", "'ts' is outside sane bounds")
    return value


def json_lines(raw: bytes, limits: Limits) -> list[bytes]:
    """The publisher's JSON payload as line protocol lines (not yet through `check_line`); `Invalid` if unusable."""
    nesting = json_nesting(raw, limits.max_depth)
    if nesting is not None:
        raise Invalid(nesting, f"brackets nested deeper than {limits.max_depth} or unbalanced")
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except Invalid:
        raise
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise Invalid("json_syntax", str(err)[:200]) from err
    if not isinstance(data, dict):
        raise Invalid("json_schema", "the payload must be an object")
    device = _name(data, "device", limits)
    kind = _name(data, "kind", limits)
    assert device is not None and kind is not None
    ts = _timestamp(data.get("ts"), limits)
    static = _tags(data.get("tags"), "tags", limits)
    raw_samples = data.get("samples")
    if not isinstance(raw_samples, list) or len(raw_samples) > limits.max_samples:
        raise Invalid("json_schema", f"'samples' must be a list of at most {limits.max_samples}")
    samples = []
    for n, s in enumerate(raw_samples):
        where = f"samples[{n}]"
        if not isinstance(s, dict):
            raise Invalid("json_schema", f"{where} must be an object")
        point = _name(s, "point", limits)
        assert point is not None
        quality = s.get("quality", Quality.GOOD.value)
        if quality not in _QUALITIES:
            raise Invalid("json_schema", f"{where}: quality must be one of {sorted(_QUALITIES)}")
        reason = s.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_STRING_BYTES):
            raise Invalid("json_schema", f"{where}: reason must be a string")
        samples.append(Sample(
            device, point, _value(s.get("value"), where), ts, Quality(quality), reason or "",
            _name(s, "measurement", limits, optional=True) or kind, _tags(s.get("tags"), f"{where}.tags", limits),
        ))
    return [line.encode() for line in encode_batch(Batch(device, kind, ts, samples), static)]
