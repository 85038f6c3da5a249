"""The ingest's checks, data-driven: a line or a payload in, the accepted lines or the drop reason out."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dcim.core.linecheck import Invalid, Limits, check_line, json_lines, json_nesting
from dcim.core.samples import Batch, Quality, Sample

NOW = 1_732_250_000_000_000_000
TS = 1_732_249_000_000_000_000
LIMITS = Limits(now_ns=NOW)

LINES: list[tuple[str, str | None]] = [
    # (line, reason or None when the line is kept)
    (f"cdu,device=cdu-1,room=dh1 supply_temp_c=32.1,flow_lpm=450.2,leak=false {TS}", None),
    (f'cdu,device=cdu-1 quality="bad",quality_reason="timeout: no \\"answer\\"" {TS}', None),
    ("cdu flow_lpm=1", None),  # no timestamp: the database's clock
    (f"cdu flow_lpm=-1.5e-3,count=7i,big=18446744073709551615u,on=T {TS}", None),
    (f"cdu flow_lpm=.5 {TS}", None),
    (f"weird\\ name,tag\\,key=v\\ a\\=l f\\=x=1 {TS}", None),
    (f"  cdu flow_lpm=1 {TS}\r", None),  # CRLF and surrounding blanks are trimmed
    (f"cdu,device=cdu-1 flow_lpm=1e400 {TS}", "not_finite"),
    (f"cdu flow_lpm=1e308 {TS}", None),
    (f"cdu count=9223372036854775808i {TS}", "out_of_range"),
    (f"cdu count=-9223372036854775808i {TS}", None),
    (f"cdu count=18446744073709551616u {TS}", "out_of_range"),
    (f"cdu flow_lpm=NaN {TS}", "bad_value"),
    (f"cdu flow_lpm=inf {TS}", "bad_value"),
    (f"cdu flow_lpm=+1 {TS}", "bad_value"),
    (f"cdu flow_lpm=1. {TS}", "bad_value"),
    (f"cdu flow_lpm=yes {TS}", "bad_value"),
    (f"cdu flow_lpm=1.2.3 {TS}", "bad_value"),
    (f"cdu flow_lpm {TS}", "syntax"),
    (f"cdu {TS}", "syntax"),
    ("cdu", "syntax"),
    (f",device=x f=1 {TS}", "syntax"),  # no measurement
    (f"cdu,device= f=1 {TS}", "syntax"),  # empty tag value
    (f"cdu,=x f=1 {TS}", "syntax"),
    (f"cdu,device=a=b f=1 {TS}", "syntax"),  # unescaped = in a tag value
    (f'cdu f="unterminated {TS}', "syntax"),
    (f"cdu f=1 {TS} extra", "syntax"),
    (f"cdu f=1 {TS}0", "syntax"),  # 20 digits: past any int64
    ("cdu f=1 17322500000000000000000000", "syntax"),
    ("cdu f=1 abc", "syntax"),
    (f"cdu f=1,,g=2 {TS}", "syntax"),
    (f"cdu\x00 f=1 {TS}", "syntax"),
    (f"cdu,device=a,device=b f=1 {TS}", "duplicate_tag"),
    (f"cdu,time=a f=1 {TS}", "reserved_name"),
    (f"cdu time=1 {TS}", "reserved_name"),
    (f"cdu _field=1 {TS}", "reserved_name"),
    ("cdu f=1 1", "timestamp"),  # 1970: a clock never set
    (f"cdu f=1 {NOW + 2 * 86_400 * 10**9}", "timestamp"),  # two days ahead
    (f"cdu f=1 -{TS}", "timestamp"),
    ('cdu f="' + "x" * 70_000 + f'" {TS}', "line_too_long"),
]


@pytest.mark.parametrize(("line", "reason"), LINES, ids=[f"{n}-{r}" for n, (_, r) in enumerate(LINES)])
def test_line(line: str, reason: str | None) -> None:
    kept, got = check_line(line.encode(), LIMITS)
    assert got == reason
    assert (kept is None) == (reason is not None)
    if kept is not None:
        assert kept == line.strip(" \r").encode()


def test_string_field_over_64_kib() -> None:
    limits = Limits(now_ns=NOW, max_line_bytes=1 << 20)
    assert check_line(('cdu f="' + "x" * 70_000 + f'" {TS}').encode(), limits) == (None, "string_too_long")


def test_unsigned_only_where_the_database_has_them() -> None:
    line = f"cdu n=5u {TS}".encode()
    assert check_line(line, LIMITS) == (line, None)
    assert check_line(line, Limits(now_ns=NOW, unsigned=False)) == (None, "bad_value")


@pytest.mark.parametrize("line", ["", "   ", "# a comment", "\r"])
def test_blank_and_comment_lines_are_nothing(line: str) -> None:
    assert check_line(line.encode(), LIMITS) == (None, None)


def test_junk_costs_no_backtracking() -> None:
    # Long runs of what almost matches: linear patterns answer at once (a backtracking one would hang here).
    for junk in ["a" * 60_000, "a,b=c" * 10_000, "m " + "f=1," * 15_000, 'm f="' + "\\" * 60_000]:
        assert check_line(junk.encode(), LIMITS)[1] is not None


# ---- JSON ---------------------------------------------------------------------------------------------


def good_payload(**change: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "device": "cdu-1", "kind": "cdu", "ts": TS, "tags": {"device": "cdu-1", "site": "hall-1", "room": "dh1"},
        "samples": [
            {"point": "flow_lpm", "value": 450.5, "quality": "good", "reason": None, "measurement": "cdu",
             "tags": {}},
            {"point": "leak", "value": False, "quality": "good"},
            {"point": "pump_speed_pct", "value": None, "quality": "bad", "reason": "timeout"},
        ],
    }
    data.update(change)
    return data


def test_json_good_payload_is_the_publishers_lines() -> None:
    lines = json_lines(json.dumps(good_payload()).encode(), LIMITS)
    assert lines == [
        f'cdu,device=cdu-1,room=dh1,site=hall-1 flow_lpm=450.5,leak=false,quality="bad",'
        f'quality_reason="timeout" {TS}'.encode()
    ]
    assert all(check_line(line, LIMITS)[1] is None for line in lines)


def test_json_round_trip_of_the_publisher_format() -> None:
    from dcim.app.publisher import batch_json

    batch = Batch("pdu-1", "pdu", TS, [
        Sample("pdu-1", "power_w", 1200, TS),
        Sample("pdu-1", "current_a", 3.5, TS, measurement="pdu_outlet", tags=(("outlet", "7"),)),
        Sample("pdu-1", "label", 'say "hi"', TS),
        Sample("pdu-1", "voltage_v", None, TS, Quality.STALE, "old"),
    ])
    lines = json_lines(batch_json(batch, (("site", "hall-1"),)), LIMITS)
    assert len(lines) == 2
    assert all(check_line(line, LIMITS)[1] is None for line in lines)


HOSTILE_JSON: list[tuple[str, bytes, str]] = [
    # The four payloads that used to stop the daemon, then the rest of the schema.
    ("tags-list", b'{"device":"e","kind":"cdu","ts":1,"tags":[],"samples":[]}', "timestamp"),
    ("tags-list-good-ts", json.dumps(good_payload(tags=[])).encode(), "json_schema"),
    ("value-object", json.dumps(good_payload(samples=[{"point": "p", "value": {"a": 1}, "quality": "good"}]))
     .encode(), "json_schema"),
    ("ts-1e400", json.dumps(good_payload()).replace(str(TS), "1e400").encode(), "json_schema"),
    ("deep", b'{"device":"e","kind":"cdu","ts":1,"tags":{},"samples":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
     "json_too_deep"),
    ("deep-unbalanced", b"[" * 100_000, "json_syntax"),
    ("not-json", b"{nope", "json_syntax"),
    ("nan", json.dumps(good_payload()).replace("450.5", "NaN").encode(), "not_finite"),
    ("huge-int", json.dumps(good_payload()).replace("450.5", "1" * 5000).encode(), "json_syntax"),
    ("big-int", json.dumps(good_payload()).replace("450.5", str(2**64)).encode(), "out_of_range"),
    ("list", b"[]", "json_schema"),
    ("no-device", json.dumps(good_payload(device=None)).encode(), "json_schema"),
    ("device-number", json.dumps(good_payload(device=5)).encode(), "json_schema"),
    ("empty-kind", json.dumps(good_payload(kind="")).encode(), "json_schema"),
    ("ts-string", json.dumps(good_payload(ts="1")).encode(), "json_schema"),
    ("ts-bool", json.dumps(good_payload(ts=True)).encode(), "json_schema"),
    ("ts-ahead", json.dumps(good_payload(ts=NOW + 10**15)).encode(), "timestamp"),
    ("tag-value-number", json.dumps(good_payload(tags={"room": 5})).encode(), "json_schema"),
    ("samples-object", json.dumps(good_payload(samples={})).encode(), "json_schema"),
    ("sample-string", json.dumps(good_payload(samples=["x"])).encode(), "json_schema"),
    ("quality-unknown", json.dumps(good_payload(samples=[{"point": "p", "value": 1, "quality": "meh"}])).encode(),
     "json_schema"),
    ("point-missing", json.dumps(good_payload(samples=[{"value": 1}])).encode(), "json_schema"),
    ("sample-tags-list", json.dumps(good_payload(samples=[{"point": "p", "value": 1, "tags": ["a"]}])).encode(),
     "json_schema"),
    ("reason-number", json.dumps(good_payload(samples=[{"point": "p", "value": 1, "reason": 3}])).encode(),
     "json_schema"),
]


@pytest.mark.parametrize(("payload", "reason"), [(p, r) for _, p, r in HOSTILE_JSON],
                         ids=[name for name, _, _ in HOSTILE_JSON])
def test_json_hostile(payload: bytes, reason: str) -> None:
    with pytest.raises(Invalid) as caught:
        json_lines(payload, LIMITS)
    assert caught.value.reason == reason


def test_json_lines_with_a_reserved_point_fail_the_line_check() -> None:
    lines = json_lines(json.dumps(good_payload(samples=[{"point": "time", "value": 1}])).encode(), LIMITS)
    assert [check_line(line, LIMITS)[1] for line in lines] == ["reserved_name"]


@pytest.mark.parametrize(("text", "depth"), [
    (b"1", 0), (b"[]", 1), (b'{"a":[{"b":{}}]}', 4), (b'{"a":"[[[[[[[[[["}', 1), (b'["\\"[[["]', 1),
])
def test_json_depth(text: bytes, depth: int) -> None:
    assert json_nesting(text, depth) is None
    if depth:
        assert json_nesting(text, depth - 1) == "json_too_deep"
