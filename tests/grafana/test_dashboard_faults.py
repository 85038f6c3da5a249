"""The dashboards over what the real daemon wrote while faults were injected (tests/grafana/faults.py: a
leak, an acknowledgement, a PDU that stops answering, a chiller that trips and then stops answering), one
test per point a user found on them. The panels' own queries run against InfluxDB with Grafana's macros
filled in, and their own value mappings, thresholds and transformations are applied to what comes back
(tests/grafana/dashboards.py), so a test fails where the dashboard would mislead.

One fill serves the whole module (about a minute); each phase ends on what the database shows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.grafana.dashboards import (
    display,
    field_config,
    interpolate,
    load_all,
    panel,
    regex_value,
    transform,
)
from tests.grafana.faults import PUBLISHING_S, Run, fill
from tests.helpers import require_binary
from tests.servers import InfluxDBv1, Mosquitto

pytestmark = pytest.mark.e2e

DASHBOARDS = load_all()
HALL, RACK, COOLING, CHILLERS, ALARMS = (DASHBOARDS[f"{n}.json"] for n in
                                          ("hall", "rack", "cooling", "chillers", "alarms"))
# Grafana's $__interval for the checks: three publishing intervals and more than one poll (2 s), so a
# bucket is empty only when nothing was stored for that long.
INTERVAL_S = 4
GREEN, YELLOW, RED = "green", "#EAB839", "red"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    for cls in (Mosquitto, InfluxDBv1):
        require_binary(cls.binary_name, cls.package)
    yield from fill(Path(tmp_path_factory.mktemp("dashboard-faults")))


def variables(**chosen: str | list[str]) -> dict[str, str]:
    base: dict[str, str | list[str]] = {"site": "hall-1", "room": ".*", "severity": ".*", "rule": ".*"}
    base.update(chosen)
    return {k: v if isinstance(v, str) and v == ".*" else regex_value([v] if isinstance(v, str) else v)
            for k, v in base.items()}


def query(run: Run, target: dict[str, Any], frm: int, to: int, **chosen: str | list[str]) -> list[dict[str, Any]]:
    return run.q(interpolate(target["query"], variables(**chosen), from_ms=frm, to_ms=to, interval_s=INTERVAL_S))


def table(series: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """InfluxQL series as the InfluxDB datasource's table format: Time, the GROUP BY tags, the fields."""
    if not series:
        return [], []
    tag_keys = sorted(series[0].get("tags", {}))
    columns = ["Time", *tag_keys, *series[0]["columns"][1:]]
    rows = [[row[0], *(s.get("tags", {})[k] for k in tag_keys), *row[1:]]
            for s in series for row in s["values"]]
    return columns, rows


def buckets(series: list[dict[str, Any]], column: str) -> dict[int, Any]:
    """Time bucket -> value of one column of a single-series time series result."""
    (s,) = series
    i = s["columns"].index(column)
    return {row[0]: row[i] for row in s["values"]}


def inside(values: dict[int, Any], start_ms: int, end_ms: int) -> dict[int, Any]:
    """Buckets wholly within [start_ms, end_ms]."""
    return {t: v for t, v in values.items() if t >= start_ms and t + INTERVAL_S * 1000 <= end_ms}


def rows_by(columns: list[str], rows: list[list[Any]], key: str) -> dict[str, dict[str, Any]]:
    return {row[columns.index(key)]: dict(zip(columns, row, strict=True)) for row in rows}


def status_changes(run: Run, device: str) -> list[tuple[int, bool]]:
    series = run.q(f"SELECT \"online\" FROM \"device_status\" WHERE \"device\" = '{device}'")
    return [(t, online) for s in series for t, online in s["values"]]


# ---- "active alarms all show a time of now minus 7 days" ---------------------------------------------


@pytest.mark.parametrize("dashboard", ["hall", "alarms"])
def test_active_alarms_show_when_they_fired(run: Run, dashboard: str) -> None:
    source = HALL if dashboard == "hall" else ALARMS
    (target,) = panel(source, "Active alarms")["targets"]
    columns, rows = table(query(run, target, run.marks["start"], run.end_ms))
    alarms = rows_by(columns, rows, "rule")
    assert {"cdu-leak", "chiller-trip"} <= set(alarms), alarms
    for rule, row in alarms.items():
        assert run.marks["start"] <= row["Time"] <= run.end_ms, (rule, row)
    stored = run.q("SELECT \"state\" FROM \"alarm\" WHERE \"rule\" = 'cdu-leak'")[0]["values"][0][0]
    assert alarms["cdu-leak"]["Time"] == stored  # the firing event's own time
    assert run.marks["leak"] <= stored <= run.marks["ack"]


# ---- "who acknowledged an alarm" ---------------------------------------------------------------------


def test_active_alarms_show_who_acknowledged(run: Run) -> None:
    alarm_panel = panel(HALL, "Active alarms")
    columns, rows = table(query(run, alarm_panel["targets"][0], run.marks["start"], run.end_ms))
    columns, rows = transform(columns, rows, alarm_panel["transformations"])
    alarms = rows_by(columns, rows, "rule")
    leak, trip = alarms["cdu-leak"], alarms["chiller-trip"]
    assert leak["state"] == "firing"  # an acknowledged alarm is still active
    assert leak["acknowledged by"] == "alice"
    assert display(leak["acknowledged"], field_config(alarm_panel, "acknowledged")) == ("acknowledged", GREEN)
    assert trip["acknowledged by"] == ""
    assert display(trip["acknowledged"], field_config(alarm_panel, "acknowledged"))[0] == "not acknowledged"
    # The acknowledgement is merged into the firing event's point: no second event to count or annotate.
    assert run.scalar("SELECT count(\"state\") FROM \"alarm\" WHERE \"rule\" = 'cdu-leak'") == 1
    fired = panel(ALARMS, "Alarms fired")["targets"][0]
    counted = query(run, fired, run.marks["start"], run.end_ms, rule="cdu-leak")
    assert sum(v for s in counted for _, v in s["values"] if v) == 1


# ---- "running CDU pumps are painted red" -------------------------------------------------------------


def test_running_pumps_are_green(run: Run) -> None:
    stored = run.q('SELECT last("pump1_running"), last("pump2_running") FROM "cdu" GROUP BY "device"')
    assert all(v is True for s in stored for v in s["values"][0][1:]), stored  # the simulated pumps run
    pumps = panel(COOLING, "Pumps")
    (series,) = query(run, pumps["targets"][0], run.marks["start"], run.end_ms, cdu="cdu-2")
    latest = dict(zip(series["columns"], series["values"][-1], strict=True))
    for name in ("pump 1", "pump 2"):
        assert display(latest[name], field_config(pumps, name)) == ("running", GREEN), name
    assert display(latest["fault"], field_config(pumps, "fault")) == ("ok", GREEN)

    timeline = panel(COOLING, "Leaks and faults")
    (series,) = query(run, timeline["targets"][0], run.marks["start"], run.end_ms, cdu="cdu-1")
    colours: dict[str, set[str]] = {}
    for row in series["values"]:
        for name, value in zip(series["columns"][1:], row[1:], strict=True):
            if value is not None:
                colours.setdefault(name, set()).add(display(value, field_config(timeline, name))[1])
    assert colours["pump 1"] == colours["pump 2"] == {GREEN}
    assert RED in colours["leak"]  # cdu-1 leaked: that row does turn red


# ---- "the chiller charts are nearly empty" -----------------------------------------------------------


def _online_spans(run: Run, device: str) -> list[tuple[int, int]]:
    spans, since = [], None
    for ts, online in [*status_changes(run, device), (run.end_ms, False)]:
        if online and since is None:
            since = ts
        elif not online and since is not None:
            spans.append((since, ts))
            since = None
    return spans


@pytest.mark.parametrize("title", ["Chilled water", "Condenser water", "Cooling and electrical power"])
def test_chiller_charts_are_continuous_while_it_answers(run: Run, title: str) -> None:
    """Subscribe mode: the condenser water and the setpoint hold still, and a change-only subscription
    stored them once; the heartbeat stores them every publishing interval while the subscription lives."""
    (target,) = panel(CHILLERS, title)["targets"]
    series = query(run, target, run.marks["start"], run.end_ms, chiller="chiller-1")
    checked = 0
    for column in series[0]["columns"][1:]:
        values = buckets(series, column)
        for start, end in _online_spans(run, "chiller-1"):
            # From the first heartbeat after the subscription came up until the chiller tripped.
            window = inside(values, start + int(PUBLISHING_S * 1000), min(end, run.marks["chiller_trip"]))
            gaps = sorted(t for t, v in window.items() if v is None)
            assert gaps == [], (title, column, gaps, start, end)
            checked += len(window)
    assert checked >= 2 * len(series[0]["columns"][1:]), "too short a run to show continuity"


def test_a_dead_chiller_is_a_gap(run: Run) -> None:
    (target,) = panel(CHILLERS, "Condenser water")["targets"]
    (offline_at, online), = status_changes(run, "chiller-1")[-1:]
    assert online is False and offline_at >= run.marks["chiller_dead"]
    values = buckets(query(run, target, run.marks["start"], run.end_ms, chiller="chiller-1"), "entering")
    after = inside(values, offline_at, run.end_ms + 60_000)
    before = inside(values, run.marks["chiller_ok"], run.marks["chiller_trip"])
    assert before and all(v is not None for v in before.values())
    assert after and all(v is None for v in after.values()), after  # no heartbeat, no fill: a gap


# ---- "a PDU that stops answering draws as a 116 kW load drop" ----------------------------------------


def test_a_dead_pdu_is_a_gap_not_a_drop(run: Run) -> None:
    chart = panel(HALL, "IT power against budget")
    power_t, budget_t = chart["targets"]
    power = buckets(query(run, power_t, run.marks["start"], run.end_ms), "IT power")
    budget = buckets(query(run, budget_t, run.marks["start"], run.end_ms), "budget")
    known = {t: v for t, v in power.items() if v is not None}
    assert known, "no interval with the whole hall's power known"
    # Never a partial sum: every value drawn is the whole hall's.
    assert min(known.values()) > 0.85 * max(known.values()), known
    assert {v for v in budget.values() if v is not None} and \
        all(abs(v - 400.0) < 1.0 for v in budget.values() if v is not None), budget  # 2 x 150 + 2 x 50 kW
    # From the first rack line without A01's power on (the PDU stays dead): unknown, drawn as a gap.
    (lines,) = run.q(f"SELECT \"power_kw\", \"quality_reason\" FROM \"rack\" WHERE \"rack\" = 'A01' "
                     f"AND time >= {run.marks['pdu_dead']}ms")
    without = [i for i, (_, kw, _) in enumerate(lines["values"]) if kw is None]
    assert without and all(kw is None for _, kw, _ in lines["values"][without[0]:])
    first_bad = lines["values"][without[0]][0]
    assert "pdu-a01a" in lines["values"][without[0]][2]
    dead = inside(power, first_bad, run.end_ms)
    assert dead and all(v is None for v in dead.values()), dead
    assert all(v is None for v in inside(budget, first_bad, run.end_ms).values())

    # The rack's own charts: feed A is missing, not 0; feed B goes on.
    feeds = panel(RACK, "Feeds A and B")["targets"][0]
    series = query(run, feeds, run.marks["start"], run.end_ms, rack="A01", rack_cdu="cdu-1")
    feed_a, feed_b = buckets(series, "feed A"), buckets(series, "feed B")
    assert all(v is None for v in inside(feed_a, first_bad, run.end_ms).values())
    assert any(v for v in inside(feed_b, first_bad, run.end_ms).values())
    by_feed = panel(RACK, "PDU power by feed")["targets"][0]
    series = query(run, by_feed, run.marks["start"], run.end_ms, rack="A01", rack_cdu="cdu-1")
    (feed_a_pdu,) = [s for s in series if s["tags"]["feed"] == "a"]
    stored = {t: v for t, v in feed_a_pdu["values"]}
    assert all(v is None for v in inside(stored, first_bad, run.end_ms).values())


# ---- "no panel shows device online/offline" ----------------------------------------------------------


def test_devices_online_and_offline(run: Run) -> None:
    devices = panel(HALL, "Devices")
    columns, rows = table(query(run, devices["targets"][0], run.marks["start"], run.end_ms))
    columns, rows = transform(columns, rows, devices["transformations"])
    by_device = rows_by(columns, rows, "device")
    assert len(by_device) == 11
    online = field_config(devices, "online")
    pdu = by_device["pdu-a01a"]
    assert display(pdu["online"], online) == ("offline", RED)
    assert pdu["since"] >= run.marks["pdu_dead"] and pdu["error"] and pdu["kind"] == "pdu"
    assert display(by_device["chiller-1"]["online"], online) == ("offline", RED)
    assert display(by_device["pdu-a02a"]["online"], online) in {("online", GREEN), ("offline", RED)}
    offline = panel(HALL, "Devices offline")
    count = query(run, offline["targets"][0], run.marks["start"], run.end_ms)[0]["values"][0][1]
    assert count == sum(1 for d in by_device.values() if d["online"] is False) >= 2
    assert display(count, field_config(offline, "count"))[1] == RED


# ---- "outlets sort 1, 10, 11, ..." -------------------------------------------------------------------


@pytest.mark.parametrize("title", ["Outlets", "Outlet power"])
def test_outlets_in_natural_order(run: Run, title: str) -> None:
    outlets = panel(RACK, title)
    columns, rows = table(query(run, outlets["targets"][0], run.marks["start"], run.end_ms, rack="A02",
                                rack_cdu="cdu-2"))
    assert len(rows) > 10  # enough outlets for 1, 10, 11, 2 to happen
    raw = [row[columns.index("outlet")] for row in rows if row[columns.index("feed")] == "a"]
    assert raw != sorted(raw, key=int)  # InfluxDB's order is the text order
    columns, rows = transform(columns, rows, outlets["transformations"])
    order = [(row[columns.index("feed")], float(row[columns.index("outlet")])) for row in rows]
    assert order == sorted(order)
    feeds = [f for f, _ in order]
    assert feeds == sorted(feeds) and {"a", "b"} <= set(feeds)
    if title == "Outlet power":
        # One bar per row named by the row's text fields: the outlet went back to text ("a 1", not "a 1.0").
        assert all(isinstance(row[columns.index("outlet")], str) for row in rows)
        assert rows[0][columns.index("outlet")] == "1"
        assert outlets["options"]["reduceOptions"]["values"] is True


# ---- "site-wide alarm annotations land on every panel" -----------------------------------------------


def test_alarm_annotations_are_scoped(run: Run) -> None:
    for name, dashboard in DASHBOARDS.items():
        (anno,) = [a for a in dashboard["annotations"]["list"] if not a.get("builtIn")]
        charts = {p["id"]: p["title"] for p in dashboard["panels"] if p["type"] in ("timeseries", "state-timeline")}
        repeats = [p["repeat"] for p in dashboard["panels"] if p["type"] == "row" and p.get("repeat")]
        if repeats:
            # Repeated rows: no panel filter (the copies' ids are Grafana's); the query names the devices.
            assert "filter" not in anno and f"/^${repeats[0]}$/" in anno["target"]["query"], name
            continue
        ids = anno["filter"]["ids"]
        assert anno["filter"]["exclude"] is False and ids, name
        assert set(ids) <= set(charts), (name, ids)
        if len(charts) > 1:
            assert len(ids) < len(charts), f"{name}: the alarms are drawn on every chart"
    hall_ids = next(a for a in HALL["annotations"]["list"] if not a.get("builtIn"))["filter"]["ids"]
    assert [p["title"] for p in HALL["panels"] if p["id"] in hall_ids] == ["IT power against budget"]

    def rules(dashboard: dict[str, Any], **chosen: str) -> set[str]:
        (anno,) = [a for a in dashboard["annotations"]["list"] if not a.get("builtIn")]
        series = query(run, anno["target"], run.marks["start"], run.end_ms, **chosen)
        return {row[s["columns"].index("rule")] for s in series for row in s["values"]}

    # The rack's annotations are the rack's alarms: its dead PDU, not the leak on a CDU or the chiller.
    assert "device-offline" in rules(RACK, rack="A01", rack_cdu="cdu-1")
    assert not {"cdu-leak", "chiller-trip"} & rules(RACK, rack="A01", rack_cdu="cdu-1")
    # A room of the hall: not the chiller plant's alarms.
    assert "cdu-leak" in rules(HALL, room="dh1") and "chiller-trip" not in rules(HALL, room="dh1")
    assert "chiller-trip" in rules(CHILLERS, chiller="chiller-1")
    assert "cdu-leak" not in rules(CHILLERS, chiller="chiller-1")


# ---- "a stopped chiller's COP 0.00 is shown yellow" --------------------------------------------------


def test_no_cop_while_the_chiller_is_not_running(run: Run) -> None:
    stat = panel(CHILLERS, "COP", "stat")
    (series,) = query(run, stat["targets"][0], run.marks["start"], run.end_ms, chiller="chiller-1")
    last = series["values"][-1][1]
    assert last == 0  # tripped, then gone: the last COP stored is the stopped chiller's 0
    text, colour = display(last, field_config(stat, "COP"))
    assert text == "not running" and colour not in (YELLOW, RED), (text, colour)
    running = run.scalar(f'SELECT last("cop") FROM "chiller" WHERE time < {run.marks["chiller_trip"]}ms')
    assert running > 4 and display(running, field_config(stat, "COP"))[1] == GREEN

    chart = panel(CHILLERS, "COP", "timeseries")
    values = buckets(query(run, chart["targets"][0], run.marks["start"], run.end_ms, chiller="chiller-1"), "COP")
    tripped = run.q(f"SELECT \"cop\" FROM \"chiller\" WHERE \"cop\" = 0 AND time >= {run.marks['chiller_trip']}ms "
                    "LIMIT 1")[0]["values"][0][0]
    stopped = inside(values, tripped, run.end_ms)
    assert stopped and all(v is None for v in stopped.values()), stopped  # a gap, not a line at 0
    assert any(v and v > 4 for v in inside(values, run.marks["chiller_ok"], tripped).values())
