"""Generate the operators' dashboards (grafana/dashboards/*.json) from one place.

    .venv/bin/python grafana/build.py           # rewrite the JSON files
    .venv/bin/python grafana/build.py --check   # exit 1 if a file is not what this script generates

Why a generator: five dashboards share a datasource, variables, units and threshold colours; by hand
they drift. Threshold colours are read from rules/packs/*.yaml, so a panel turns yellow and red exactly
where the rule engine warns and raises critical alarms. Relative thresholds ("setpoint_c + 2") cannot be
static colours: those panels plot the reference (the setpoint) beside the value instead.

Query conventions (tests/grafana checks them): InfluxQL, every identifier double-quoted, `$timeFilter`
and `GROUP BY time($__interval)` for time series, variables as `=~ /^$var$/` so multi-value and All work.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent
PACKS = ROOT.parent / "dcim" / "rules" / "packs"
OUT = ROOT / "dashboards"

DS_UID = "dcim-influxdb"
DS = {"type": "influxdb", "uid": DS_UID}
SCHEMA_VERSION = 39  # Grafana 10.4 / 11.x
TAG = "dcim"

GREEN, YELLOW, RED, BLUE = "green", "#EAB839", "red", "blue"

# ---- thresholds from the rule packs ------------------------------------------------------------------


def _pack_rules() -> dict[str, dict[str, Any]]:
    """metric -> the first rule (of any pack) with absolute numeric thresholds on it."""
    rules: dict[str, dict[str, Any]] = {}
    for path in sorted(PACKS.glob("*.yaml")):
        for rule in (yaml.safe_load(path.read_text()) or {}).get("rules", []):
            numeric = [rule.get(k) for k in ("warning", "critical") if rule.get(k) is not None]
            if numeric and all(isinstance(v, int | float) for v in numeric):
                rules.setdefault(rule["metric"], rule)
    return rules


PACK = _pack_rules()


def pack_steps(metric: str) -> list[dict[str, Any]]:
    """Grafana threshold steps matching the rule pack's warning / critical levels for `metric`."""
    rule = PACK.get(metric)
    if rule is None:
        raise KeyError(f"no rule pack sets numeric thresholds on {metric!r}")
    return _steps_for(rule.get("when", "above"), rule.get("warning"), rule.get("critical"))


def _steps_for(when: str, warning: float | None, critical: float | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]]
    if when == "below":
        out = [{"color": RED if critical is not None else YELLOW, "value": None}]
        if critical is not None and warning is not None:
            out.append({"color": YELLOW, "value": critical})
        out.append({"color": GREEN, "value": warning if warning is not None else critical})
        return out
    out = [{"color": GREEN, "value": None}]
    if warning is not None:
        out.append({"color": YELLOW, "value": warning})
    if critical is not None:
        out.append({"color": RED, "value": critical})
    return out


def _rule(name: str) -> dict[str, Any]:
    for path in sorted(PACKS.glob("*.yaml")):
        for rule in (yaml.safe_load(path.read_text()) or {}).get("rules", []):
            if rule.get("name") == name:
                return dict(rule)
    raise KeyError(f"no rule {name!r} in rules/packs")


def relative_steps(name: str) -> list[dict[str, Any]]:
    """Steps for a rule whose thresholds are relative ("90% of flow_setpoint_lpm", "supply_temp_c + 15"):
    the panel plots the ratio or the difference, and the numbers come from the rule."""
    rule = _rule(name)
    levels = {}
    for key in ("warning", "critical"):
        spec = rule.get(key)
        if spec is None:
            continue
        match = re.match(r"^\s*([-+]?\d+(?:\.\d+)?)\s*%\s*of\s", str(spec)) or \
            re.search(r"[-+]\s*(\d+(?:\.\d+)?)\s*$", str(spec))
        if match is None:
            raise ValueError(f"rule {name}: cannot read a number from {key} {spec!r}")
        levels[key] = float(match.group(1))
    return _steps_for(rule.get("when", "above"), levels.get("warning"), levels.get("critical"))


def steps(*levels: tuple[str, float | None]) -> list[dict[str, Any]]:
    return [{"color": color, "value": value} for color, value in levels]


NEUTRAL = steps((GREEN, None))

# ---- queries -----------------------------------------------------------------------------------------

SITE = '"site" =~ /^$site$/'


def target(query: str, ref: str = "A", alias: str = "", fmt: str = "time_series") -> dict[str, Any]:
    out: dict[str, Any] = {"refId": ref, "datasource": DS, "rawQuery": True, "query": query,
                           "resultFormat": fmt}
    if alias:
        out["alias"] = alias
    return out


def series(measurement: str, fields: dict[str, str], where: str, *, agg: str = "mean",
           group: str = "") -> str:
    """SELECT agg("f") AS "label", ... FROM "m" WHERE <where> AND $timeFilter GROUP BY time($__interval)."""
    cols = ", ".join(f'{agg}("{f}") AS "{label}"' for f, label in fields.items())
    tags = "".join(f', "{t}"' for t in group.split(",") if t)
    return (f'SELECT {cols} FROM "{measurement}" WHERE {where} AND $timeFilter '
            f"GROUP BY time($__interval){tags} fill(null)")


def latest(measurement: str, fields: dict[str, str], where: str, group: str = "") -> str:
    cols = ", ".join(f'last("{f}") AS "{label}"' for f, label in fields.items())
    tags = ", ".join(f'"{t}"' for t in group.split(",") if t)
    return f'SELECT {cols} FROM "{measurement}" WHERE {where} AND $timeFilter' + (f" GROUP BY {tags}" if tags else "")


# ---- panels ------------------------------------------------------------------------------------------


@dataclass
class Panel:
    type: str
    title: str
    targets: list[dict[str, Any]]
    unit: str
    w: int = 12
    h: int = 8
    thresholds: list[dict[str, Any]] = field(default_factory=lambda: NEUTRAL)
    description: str = ""
    decimals: int | None = None
    min: float | None = None
    max: float | None = None
    mappings: list[dict[str, Any]] = field(default_factory=list)
    overrides: list[dict[str, Any]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    custom: dict[str, Any] = field(default_factory=dict)
    transformations: list[dict[str, Any]] = field(default_factory=list)
    color_mode: str = ""
    links: list[dict[str, Any]] = field(default_factory=list)
    # Shown instead of "No data": a count of troubles is 0, not unknown, when nothing matches.
    no_value: str | None = None
    # A stat of states (strings, booleans): Grafana's stat shows numeric fields only unless told which.
    states: bool = False

    def render(self, pid: int, x: int, y: int) -> dict[str, Any]:
        defaults: dict[str, Any] = {
            "unit": self.unit,
            "thresholds": {"mode": "absolute", "steps": self.thresholds},
            "color": {"mode": self.color_mode or ("thresholds" if self.type in _THRESHOLD_COLOURED
                                                   else "palette-classic"),
                      **({"fixedColor": BLUE} if self.color_mode == "fixed" else {})},
            "mappings": self.mappings,
        }
        for key in ("decimals", "min", "max"):
            if getattr(self, key) is not None:
                defaults[key] = getattr(self, key)
        if self.links:
            defaults["links"] = self.links
        if self.no_value is not None:
            defaults["noValue"] = self.no_value
        if self.type == "timeseries":
            custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                      "spanNulls": False, "thresholdsStyle": {"mode": "line+area"
                                                              if self.thresholds is not NEUTRAL else "off"}}
            custom.update(self.custom)
            defaults["custom"] = custom
        elif self.custom:
            defaults["custom"] = self.custom
        options: dict[str, Any] = {**_OPTIONS.get(self.type, {}), **self.options}
        if self.states:
            aliases = [a for t in self.targets for a in re.findall(r'AS "([^"]+)"', t["query"])]
            fields = "/^(" + "|".join(re.escape(a).replace("\\ ", " ") for a in aliases) + ")$/"
            options["reduceOptions"] = {**options["reduceOptions"], "fields": fields}
        panel: dict[str, Any] = {
            "id": pid, "type": self.type, "title": self.title, "description": self.description,
            "datasource": DS, "gridPos": {"x": x, "y": y, "w": self.w, "h": self.h},
            "targets": self.targets,
            "fieldConfig": {"defaults": defaults, "overrides": self.overrides},
            "options": options,
        }
        if self.transformations:
            panel["transformations"] = self.transformations
        return panel


_THRESHOLD_COLOURED = {"stat", "gauge", "bargauge", "table", "state-timeline"}
_REDUCE = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
_OPTIONS: dict[str, dict[str, Any]] = {
    "timeseries": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                   "tooltip": {"mode": "multi", "sort": "none"}},
    "stat": {**_REDUCE, "colorMode": "background", "graphMode": "area", "justifyMode": "auto",
             "textMode": "auto", "orientation": "auto"},
    "gauge": {**_REDUCE, "showThresholdMarkers": True, "showThresholdLabels": False},
    "bargauge": {**_REDUCE, "displayMode": "gradient", "orientation": "horizontal", "showUnfilled": True},
    "table": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
    "state-timeline": {"mergeValues": True, "showValue": "auto", "alignValue": "left", "rowHeight": 0.9,
                       "legend": {"displayMode": "list", "placement": "bottom"}},
}


def unit_override(column: str, unit: str, **extra: Any) -> dict[str, Any]:
    props = [{"id": "unit", "value": unit}]
    props += [{"id": key, "value": value} for key, value in extra.items()]
    return {"matcher": {"id": "byName", "options": column}, "properties": props}


def bool_mapping(true_text: str, false_text: str, *, true_bad: bool = True) -> list[dict[str, Any]]:
    bad, good = (RED, GREEN) if true_bad else (GREEN, RED)
    return [{"type": "value", "options": {
        "true": {"text": true_text, "color": bad, "index": 0},
        "false": {"text": false_text, "color": good, "index": 1}}}]


def text_mapping(colours: dict[str, str]) -> list[dict[str, Any]]:
    return [{"type": "value", "options": {
        text: {"text": text, "color": colour, "index": i} for i, (text, colour) in enumerate(colours.items())}}]


# ---- dashboards --------------------------------------------------------------------------------------


def query_var(name: str, label: str, query: str, *, multi: bool = False, include_all: bool = False,
              hide: int = 0) -> dict[str, Any]:
    var: dict[str, Any] = {
        "type": "query", "name": name, "label": label, "datasource": DS, "query": query,
        "definition": query, "refresh": 1, "sort": 1, "multi": multi, "includeAll": include_all,
        "hide": hide, "regex": "", "current": {}, "options": [], "skipUrlSync": False,
    }
    if include_all:
        # `.*` rather than every value OR-ed: the query stays short however many racks a hall has.
        var["allValue"] = ".*"
    return var


def custom_var(name: str, label: str, values: list[str]) -> dict[str, Any]:
    return {
        "type": "custom", "name": name, "label": label, "query": ",".join(values), "multi": True,
        "includeAll": True, "allValue": ".*", "hide": 0, "current": {}, "skipUrlSync": False,
        "options": [{"text": v, "value": v, "selected": False} for v in values],
    }


SITE_VAR = query_var("site", "Site", 'SHOW TAG VALUES FROM /^(rack|pdu|cdu|chiller)$/ WITH KEY = "site"')
ROOM_VAR = query_var("room", "Room", 'SHOW TAG VALUES FROM /^(rack|pdu|cdu)$/ WITH KEY = "room" WHERE ' + SITE,
                     multi=True, include_all=True)

ALARM_ANNOTATION_QUERY = ('SELECT "message", "rule", "severity", "state" FROM "alarm" WHERE {where} AND '
                          "\"state\" != 'pending' AND $timeFilter")


def alarm_annotation(where: str, *panels: str) -> dict[str, Any]:
    """Alarm events of the dashboard's subject (`where`), drawn on the named panels only: without a filter
    Grafana draws every annotation on every time series panel, a site's alarms over every chart. No panels
    on dashboards whose rows repeat per device: the copies Grafana makes get panel ids of their own, which
    a filter would not name, and `where` already narrows the events to the chosen devices.

    The target is in the shape Grafana's InfluxDB datasource migrates legacy annotations to (InfluxQL,
    `fromAnnotations`): the event's message is the text, rule / severity / state its tags."""
    query = ALARM_ANNOTATION_QUERY.format(where=where)
    anno: dict[str, Any] = {
        "name": "Alarms", "datasource": DS, "enable": True, "iconColor": "red", "hide": False,
        "target": {"refId": "Anno", "datasource": DS, "rawQuery": True, "query": query, "queryType": "tags",
                   "fromAnnotations": True, "textColumn": "message", "tagsColumn": "rule,severity,state",
                   "titleColumn": "", "timeEndColumn": ""},
    }
    if panels:
        # Titles here; Dashboard.render turns them into the panels' ids.
        anno["filter"] = {"exclude": False, "ids": list(panels)}
    return anno


BUILTIN_ANNOTATION = {
    "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
    "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard",
}


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    variables: list[dict[str, Any]]
    annotations: list[dict[str, Any]] = field(default_factory=list)
    refresh: str = "30s"
    time_from: str = "now-6h"
    items: list[Panel | tuple[str, str]] = field(default_factory=list)  # rows are (title, repeat variable)

    def add(self, *panels: Panel) -> Dashboard:
        self.items.extend(panels)
        return self

    def row(self, title: str, repeat: str = "") -> Dashboard:
        self.items.append((title, repeat))
        return self

    def render(self) -> dict[str, Any]:
        panels: list[dict[str, Any]] = []
        x = y = row_h = 0
        pid = 1
        for item in self.items:
            if isinstance(item, tuple):
                title, repeat = item
                if x:
                    x, y = 0, y + row_h
                row: dict[str, Any] = {"id": pid, "type": "row", "title": title, "collapsed": False,
                                       "panels": [], "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}}
                if repeat:
                    row["repeat"] = repeat
                panels.append(row)
                pid, y, row_h = pid + 1, y + 1, 0
                continue
            if x + item.w > 24:
                x, y, row_h = 0, y + row_h, 0
            panels.append(item.render(pid, x, y))
            pid, x, row_h = pid + 1, x + item.w, max(row_h, item.h)
        ids = {p["title"]: p["id"] for p in panels}
        annotations = [{**a, "filter": {**a["filter"], "ids": [ids[t] for t in a["filter"]["ids"]]}}
                       if "filter" in a else a for a in self.annotations]
        return {
            "uid": self.uid, "title": self.title, "description": self.description, "tags": [TAG],
            "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": True, "graphTooltip": 1,
            "timezone": "browser", "fiscalYearStartMonth": 0, "liveNow": False, "weekStart": "",
            "refresh": self.refresh, "time": {"from": self.time_from, "to": "now"},
            "timepicker": {"refresh_intervals": ["10s", "30s", "1m", "5m", "15m"]},
            "templating": {"list": self.variables},
            "annotations": {"list": [BUILTIN_ANNOTATION, *annotations]},
            "links": [{"type": "dashboards", "tags": [TAG], "asDropdown": True, "title": "dcim dashboards",
                       "includeVars": False, "keepTime": True, "targetBlank": False, "icon": "external link",
                       "tooltip": "", "url": ""}],
            "panels": panels,
        }


def active_alarms(where: str) -> str:
    """The latest event of every alarm (rule x subject) within a week, kept when it is not resolved.
    A week rather than $timeFilter: an alarm firing since yesterday is active in a 1-hour view too."""
    # One selector and plain fields: InfluxDB then takes the fields from the point last() picked, with that
    # point's time. Several selectors would each pick their own point and report the window's start as the
    # time (every alarm "since now - 7 days").
    fields = '"message", "value", "threshold", "acknowledged", "ack_by"'
    inner = (f'SELECT last("state") AS "state", {fields} FROM "alarm" WHERE {where} AND time > now() - 7d '
             'GROUP BY "rule", "severity", "rack", "device"')
    return (f'SELECT "state", {fields} FROM ({inner}) WHERE "state" != \'resolved\' '
            'GROUP BY "rule", "severity", "rack", "device"')


ALARM_STATE_COLOURS = text_mapping({"firing": RED, "pending": YELLOW, "resolved": GREEN})
ACK_MAPPING = bool_mapping("acknowledged", "not acknowledged", true_bad=False)


def alarm_table(where: str, title: str = "Active alarms", w: int = 24, h: int = 8) -> Panel:
    return Panel("table", title, [target(active_alarms(where), fmt="table")], "none", w=w, h=h,
                 description="Latest state of every alarm raised in the last 7 days that has not resolved, since "
                             "when, and who acknowledged it (`dcim alarms ack` or the HTTP API).",
                 transformations=[{"id": "merge", "options": {}},
                                  {"id": "organize", "options": {"renameByName": {
                                      "Time": "since", "ack_by": "acknowledged by"}}}],
                 overrides=[{"matcher": {"id": "byName", "options": "state"},
                             "properties": [{"id": "mappings", "value": ALARM_STATE_COLOURS},
                                            {"id": "custom.cellOptions", "value": {"type": "color-background"}}]},
                            {"matcher": {"id": "byName", "options": "acknowledged"},
                             "properties": [{"id": "mappings", "value": ACK_MAPPING},
                                            {"id": "custom.cellOptions", "value": {"type": "color-text"}}]},
                            unit_override("since", "dateTimeAsIso")])


RACK_FILTER = SITE + ' AND "room" =~ /^$room$/'


def rack_budget_subquery(where: str) -> str:
    # The budget is not stored; power_kw / utilization_pct recovers it (exact while the rack draws power).
    return ('SELECT last("power_kw") AS "power_kw", last("power_kw") / last("utilization_pct") * 100 '
            f'AS "budget_kw" FROM "rack" WHERE {where} AND $timeFilter GROUP BY "rack"')


ONLINE_MAPPING = bool_mapping("online", "offline", true_bad=False)


def device_status() -> str:
    """Each device's latest `device_status` line (written on every change of a device's availability).
    No time bound: a device online for a month has its last change a month back."""
    return ('SELECT last("online") AS "online", "error" FROM "device_status" WHERE ' + RACK_FILTER +
            ' GROUP BY "device", "kind"')


def hall_total(expr: str, alias: str) -> str:
    """Sum over the racks per interval of `expr` (a per-rack aggregate), or nothing for an interval in which
    a rack wrote a line without it: a PDU that stops answering leaves its rack's power unknown, and the hall
    total then is unknown too (a gap), not a drop by that rack's load.

    Innermost, per rack and interval: the value, and max("feed_capacity_kw"), which every rack line carries
    (from the configuration) whether its power is known or not, so counting it counts the racks that
    reported. Then the sum and how many racks reported without a value; outermost, only the complete
    intervals. No fill() inside: InfluxDB 1.x does not group filled subquery rows across series."""
    per_rack = (f'SELECT {expr} AS "v", max("feed_capacity_kw") AS "reported" FROM "rack" WHERE {RACK_FILTER} '
                'AND $timeFilter GROUP BY time($__interval), "rack"')
    hall = (f'SELECT sum("v") AS "total", count("reported") - count("v") AS "missing" FROM ({per_rack}) '
            "WHERE $timeFilter GROUP BY time($__interval)")
    return (f'SELECT mean("total") AS "{alias}" FROM ({hall}) WHERE "missing" = 0 AND $timeFilter '
            "GROUP BY time($__interval) fill(null)")


OVER_BUDGET = PACK["utilization_pct"]["critical"]
NO_REDUNDANCY = PACK["redundant_headroom_kw"]["critical"]


def hall() -> Dashboard:
    d = Dashboard("dcim-hall", "dcim / Hall overview",
                  "IT power against budget, rack utilization at a glance, active alarms.",
                  [SITE_VAR, ROOM_VAR], [alarm_annotation(RACK_FILTER, "IT power against budget")], refresh="10s")
    now = f"({rack_budget_subquery(RACK_FILTER)})"
    d.add(
        Panel("stat", "IT power", [target(f'SELECT sum("power_kw") FROM {now}')], "kwatt", w=4, h=5,
              decimals=1, description="Sum of the racks' power (both feeds), latest reading."),
        Panel("stat", "IT power budget", [target(f'SELECT sum("budget_kw") FROM {now}')], "kwatt", w=4, h=5,
              decimals=0, color_mode="fixed", description="Sum of the racks' power budgets."),
        Panel("gauge", "Hall utilization", [target(f'SELECT sum("power_kw") / sum("budget_kw") * 100 FROM {now}')],
              "percent", w=4, h=5, min=0, max=110, decimals=1, thresholds=pack_steps("utilization_pct"),
              description="IT power as a share of the summed budgets (rule pack: warning 90 %, critical 100 %)."),
        Panel("stat", "Racks over budget",
              [target('SELECT count("u") FROM (SELECT last("utilization_pct") AS "u" FROM "rack" WHERE '
                      f'{RACK_FILTER} AND $timeFilter GROUP BY "rack") WHERE "u" >= {OVER_BUDGET}')],
              "none", w=4, h=5, thresholds=steps((GREEN, None), (RED, 1)), options={"graphMode": "none"}, no_value="0",
              description="Racks at or above the power-budget rule's critical level."),
        Panel("stat", "Alarms firing",
              [target(f'SELECT count("state") FROM ({active_alarms(SITE)}) WHERE "state" = \'firing\'')],
              "none", w=4, h=5, thresholds=steps((GREEN, None), (RED, 1)), options={"graphMode": "none"},
              no_value="0"),
        Panel("stat", "Racks without redundancy",
              [target('SELECT count("h") FROM (SELECT last("redundant_headroom_kw") AS "h" FROM "rack" WHERE '
                      f'{RACK_FILTER} AND $timeFilter GROUP BY "rack") WHERE "h" < {NO_REDUNDANCY}')],
              "none", w=4, h=5, thresholds=steps((GREEN, None), (RED, 1)), options={"graphMode": "none"}, no_value="0",
              description="Racks whose load one feed alone could not carry (redundant headroom below 0)."),
    )
    d.add(
        Panel("timeseries", "IT power against budget", [
            target(hall_total('mean("power_kw")', "IT power"), "A"),
            target(hall_total('mean("power_kw") / mean("utilization_pct") * 100', "budget"), "B"),
        ], "kwatt", w=12, h=9,
            description="Summed over the racks. An interval in which a rack's power is unknown (a PDU not "
                        "answering) is a gap in both lines, not a drop.",
            overrides=[{"matcher": {"id": "byName", "options": "budget"}, "properties": [
                {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                {"id": "color", "value": {"mode": "fixed", "fixedColor": RED}}]}]),
        Panel("bargauge", "Rack utilization",
              [target(f'SELECT last("utilization_pct") FROM "rack" WHERE {RACK_FILTER} AND $timeFilter '
                      'GROUP BY "rack"', alias="$tag_rack")],
              "percent", w=12, h=9, min=0, max=110, thresholds=pack_steps("utilization_pct"),
              links=[{"title": "Rack detail",
                      "url": "/d/dcim-rack/rack-detail?var-rack=${__series.name}&${__url_time_range}"}]),
        Panel("table", "Racks", [target(
            'SELECT last("power_kw") AS "power", last("utilization_pct") AS "utilization", '
            'last("branch_load_pct") AS "branch load", last("redundant_headroom_kw") AS "headroom", '
            'last("flow_ratio_pct") AS "coolant flow" '
            f'FROM "rack" WHERE {RACK_FILTER} AND $timeFilter GROUP BY "room", "row", "rack"', fmt="table")],
            "kwatt", w=24, h=10, decimals=1,
            transformations=[{"id": "merge", "options": {}},
                             {"id": "organize", "options": {"excludeByName": {"Time": True}}}],
            overrides=[
                unit_override("utilization", "percent", **{"thresholds": {"mode": "absolute",
                              "steps": pack_steps("utilization_pct")},
                              "custom.cellOptions": {"type": "color-background"}}),
                unit_override("branch load", "percent", **{"thresholds": {"mode": "absolute",
                              "steps": pack_steps("branch_load_pct")},
                              "custom.cellOptions": {"type": "color-background"}}),
                unit_override("headroom", "kwatt", **{"thresholds": {"mode": "absolute",
                              "steps": pack_steps("redundant_headroom_kw")},
                              "custom.cellOptions": {"type": "color-background"}}),
                unit_override("coolant flow", "percent", **{"thresholds": {"mode": "absolute",
                              "steps": pack_steps("flow_ratio_pct")},
                              "custom.cellOptions": {"type": "color-background"}}),
                {"matcher": {"id": "byName", "options": "rack"}, "properties": [{"id": "links", "value": [
                    {"title": "Rack detail", "url": "/d/dcim-rack/rack-detail?var-rack=${__value.raw}"}]}]},
            ]),
        alarm_table(SITE, w=16),
        Panel("stat", "Devices offline",
              [target(f'SELECT count("online") FROM ({device_status()}) WHERE "online" = false')],
              "none", w=8, h=8, thresholds=steps((GREEN, None), (RED, 1)), options={"graphMode": "none"},
              no_value="0", description="Devices whose last poll (or subscription) failed."),
        Panel("table", "Devices", [target(device_status(), fmt="table")], "none", w=24, h=10,
              description="Online or offline as of the device's last change, since when, and why it is offline. "
                          "The daemon stores a change, not every poll: the table reads each device's latest "
                          "whenever it was.",
              transformations=[{"id": "merge", "options": {}},
                               {"id": "organize", "options": {"renameByName": {"Time": "since"}}}],
              overrides=[{"matcher": {"id": "byName", "options": "online"},
                          "properties": [{"id": "mappings", "value": ONLINE_MAPPING},
                                         {"id": "custom.cellOptions", "value": {"type": "color-background"}}]},
                         unit_override("since", "dateTimeAsIso")]),
    )
    return d


RACK = '"rack" =~ /^$rack$/'
# Outlet numbers are tag values, text to InfluxDB (1, 10, 11, ..., 2): as numbers, sorted by outlet and then
# (a stable sort) by feed, they read a 1, a 2, ..., a 24, b 1, ...
OUTLET_ORDER: list[dict[str, Any]] = [
    {"id": "merge", "options": {}},
    {"id": "convertFieldType", "options": {
        "conversions": [{"targetField": "outlet", "destinationType": "number"}], "fields": {}}},
    {"id": "sortBy", "options": {"fields": {}, "sort": [{"field": "outlet", "desc": False}]}},
    {"id": "sortBy", "options": {"fields": {}, "sort": [{"field": "feed", "desc": False}]}},
]


def rack() -> Dashboard:
    variables = [
        SITE_VAR, ROOM_VAR,
        # From PDU lines too, so the power panels work in a hall whose daemon derives no rack metrics.
        query_var("rack", "Rack", 'SHOW TAG VALUES FROM /^(rack|pdu)$/ WITH KEY = "rack" WHERE ' + RACK_FILTER),
        # The CDU loop that serves the rack (rack lines carry it as a tag); hidden, follows $rack.
        query_var("rack_cdu", "CDU", 'SHOW TAG VALUES FROM "rack" WITH KEY = "cdu" WHERE ' + RACK,
                  multi=True, include_all=False, hide=2),
    ]
    d = Dashboard("dcim-rack", "dcim / Rack detail",
                  "One rack: A and B feeds, phases and imbalance, outlets, inlet temperature, coolant.",
                  variables,
                  [alarm_annotation(SITE + " AND " + RACK, "Feeds A and B", "Phase currents", "Coolant flow")])
    d.row("Power")
    d.add(
        Panel("stat", "Rack power", [target(latest("rack", {"power_kw": "power"}, RACK))], "kwatt", w=4, h=5,
              decimals=1),
        Panel("gauge", "Utilization of budget", [target(latest("rack", {"utilization_pct": "utilization"}, RACK))],
              "percent", w=4, h=5, min=0, max=110, thresholds=pack_steps("utilization_pct")),
        Panel("gauge", "Branch load (worst phase)", [target(latest("rack", {"branch_load_pct": "branch"}, RACK))],
              "percent", w=4, h=5, min=0, max=100, thresholds=pack_steps("branch_load_pct"),
              description="Worst phase current against its breaker: 80 % is the continuous-load limit."),
        Panel("stat", "Redundant headroom", [target(latest("rack", {"redundant_headroom_kw": "headroom"}, RACK))],
              "kwatt", w=4, h=5, decimals=1, thresholds=pack_steps("redundant_headroom_kw"),
              description="Capacity left if the worse feed is lost; below 0 the rack runs without redundancy."),
        Panel("stat", "Phase imbalance", [target(latest("rack", {"phase_imbalance_pct": "imbalance"}, RACK))],
              "percent", w=4, h=5, decimals=1, thresholds=pack_steps("phase_imbalance_pct")),
        Panel("stat", "Feed capacity", [target(latest("rack", {"feed_capacity_kw": "capacity"}, RACK))],
              "kwatt", w=4, h=5, decimals=1, color_mode="fixed",
              description="Smaller feed's usable capacity: breaker x voltage x phases x 80 %."),
        Panel("timeseries", "Feeds A and B", [
            target(series("rack", {"power_a_kw": "feed A", "power_b_kw": "feed B", "power_kw": "rack",
                                   "feed_capacity_kw": "feed capacity"}, RACK))],
              "kwatt", w=12, h=9,
              overrides=[{"matcher": {"id": "byName", "options": "feed capacity"}, "properties": [
                  {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                  {"id": "color", "value": {"mode": "fixed", "fixedColor": RED}}]}]),
        Panel("timeseries", "PDU power by feed",
              [target(series("pdu", {"power_w": "power"}, RACK + " AND \"phase\" = ''", group="feed"),
                      alias="feed $tag_feed")],
              "watt", w=12, h=9, description="Device totals reported by the feed PDUs."),
    )
    d.row("Phases")
    d.add(
        Panel("timeseries", "Phase currents", [
            target(series("pdu", {"current_a": "current"}, RACK + " AND \"phase\" != ''", group="feed,phase"),
                   "A", alias="$tag_feed L$tag_phase"),
            target(series("pdu", {"near_overload_current_a": "near overload"}, RACK + " AND \"phase\" != ''",
                              agg="max", group="feed"), "B", alias="$tag_feed near overload"),
        ], "amp", w=12, h=9, description="Per phase of each feed, with the PDU's own near-overload threshold.",
            overrides=[{"matcher": {"id": "byRegexp", "options": ".*near overload"}, "properties": [
                {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                {"id": "color", "value": {"mode": "fixed", "fixedColor": YELLOW}}]}]),
        Panel("timeseries", "Phase imbalance and branch load",
              [target(series("rack", {"phase_imbalance_pct": "imbalance", "branch_load_pct": "branch load"},
                             RACK))],
              "percent", w=12, h=9, thresholds=pack_steps("phase_imbalance_pct"),
              description="Imbalance = max |I - Iavg| / Iavg of the worse feed (15 % warning, 20 % critical)."),
        Panel("timeseries", "Phase voltages",
              [target(series("pdu", {"voltage_ln_v": "L-N", "voltage_ll_v": "L-L"}, RACK + " AND \"phase\" != ''",
                             group="feed,phase"), alias="$tag_feed L$tag_phase $col")], "volt", w=12, h=7),
        Panel("bargauge", "Bank currents",
              [target(latest("pdu", {"current_a": "current"}, RACK + " AND \"bank\" != ''", group="feed,bank"),
                      alias="$tag_feed bank $tag_bank")], "amp", w=12, h=7),
    )
    d.row("Outlets")
    d.add(
        Panel("bargauge", "Outlet power", [target(
            latest("pdu_outlet", {"power_w": "power"}, RACK, group="feed,outlet"), fmt="table")],
            "watt", w=12, h=12,
            # One bar per row, named by the row's text fields ("a 1"): the outlet back to text after sorting.
            options={"displayMode": "basic",
                     "reduceOptions": {"calcs": ["lastNotNull"], "fields": "/^power$/", "values": True}},
            transformations=[*OUTLET_ORDER, {"id": "convertFieldType", "options": {
                "conversions": [{"targetField": "outlet", "destinationType": "string"}], "fields": {}}}]),
        Panel("table", "Outlets", [target(
            latest("pdu_outlet", {"state": "state", "current_a": "current", "power_w": "power",
                                  "energy_kwh": "energy"}, RACK, group="feed,outlet"), fmt="table")],
            "watt", w=12, h=12,
            transformations=[*OUTLET_ORDER, {"id": "organize", "options": {"excludeByName": {"Time": True}}}],
            overrides=[unit_override("current", "amp"), unit_override("energy", "kwatth"),
                       {"matcher": {"id": "byName", "options": "state"}, "properties": [
                           {"id": "unit", "value": "none"},
                           {"id": "mappings", "value": text_mapping({"on": GREEN, "off": RED})},
                           {"id": "custom.cellOptions", "value": {"type": "color-text"}}]}]),
    )
    d.row("Environment and coolant")
    d.add(
        Panel("timeseries", "Inlet temperature",
              [target(series("pdu", {"temp_c": "temperature"}, RACK + " AND \"probe\" != ''", group="feed,probe"),
                      alias="$tag_feed probe $tag_probe")],
              "celsius", w=8, h=8, thresholds=steps((GREEN, None), (YELLOW, 27), (RED, 32)),
              description="PDU probes at the rack inlet. ASHRAE recommended limit 27 °C, A1 allowable 32 °C "
                          "(no rule pack rule: these colours are the ASHRAE envelope)."),
        Panel("timeseries", "Inlet humidity",
              [target(series("pdu", {"humidity_pct": "humidity"}, RACK + " AND \"probe\" != ''",
                             group="feed,probe"), alias="$tag_feed probe $tag_probe")],
              "humidity", w=8, h=8),
        Panel("stat", "Coolant flow delivered / required",
              [target(latest("rack", {"flow_ratio_pct": "flow"}, RACK))], "percent", w=4, h=8, decimals=0,
              thresholds=pack_steps("flow_ratio_pct"),
              description="Liquid-cooled racks: 90 % warning, 70 % critical (liquid-rack pack)."),
        Panel("stat", "Heat to liquid", [target(latest("rack", {"heat_ratio_pct": "heat"}, RACK))], "percent",
              w=4, h=8, decimals=0, thresholds=pack_steps("heat_ratio_pct"),
              description="Share of the rack's electrical power the liquid loop carries away."),
        Panel("timeseries", "Coolant flow",
              [target(series("rack", {"flow_required_lpm": "required", "flow_delivered_lpm": "delivered"}, RACK))],
              "flowlpm", w=8, h=8,
              overrides=[{"matcher": {"id": "byName", "options": "required"}, "properties": [
                  {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}]}]),
        Panel("timeseries", "Coolant temperatures (rack's CDU loop)",
              [target(series("cdu", {"supply_temp_c": "supply", "return_temp_c": "return",
                                     "supply_temp_setpoint_c": "supply setpoint"},
                             '"device" =~ /^$rack_cdu$/'))],
              "celsius", w=8, h=8, description="TCS supply and return of the CDU that serves this rack."),
        Panel("timeseries", "Heat removed against power",
              [target(series("rack", {"heat_removed_kw": "heat removed", "power_kw": "electrical power"}, RACK))],
              "kwatt", w=8, h=8),
    )
    return d


CDU = '"device" =~ /^$cdu$/'
PUMP_MAPPING = bool_mapping("running", "stopped", true_bad=False)


def cooling() -> Dashboard:
    variables = [SITE_VAR, query_var("cdu", "CDU", 'SHOW TAG VALUES FROM "cdu" WITH KEY = "device" WHERE ' + SITE,
                                     multi=True, include_all=True)]
    d = Dashboard("dcim-cooling", "dcim / Liquid cooling",
                  "Each CDU: supply and return, delta-T, flow against required, pressures, pumps, leaks.",
                  variables, [alarm_annotation(SITE + ' AND "device" =~ /^$cdu$/')])
    d.row("CDU $cdu", repeat="cdu")
    leak_fields = {"leak": "leak", **{f"leak_zone{i}": f"zone {i}" for i in range(1, 5)}}
    d.add(
        Panel("stat", "Leak", [target(latest("cdu", leak_fields, CDU))], "none", states=True, w=6, h=4,
              mappings=bool_mapping("LEAK", "dry"), options={"graphMode": "none", "colorMode": "background"},
              description="Any leak is critical (cdu-leak rule); a firing leak hides the racks' coolant alarms."),
        Panel("stat", "Pumps", [target(latest("cdu", {"pump1_running": "pump 1", "pump2_running": "pump 2",
                                                      "pump_fault": "fault"}, CDU))],
              "none", states=True, w=6, h=4, options={"graphMode": "none", "colorMode": "background"},
              mappings=PUMP_MAPPING,
              overrides=[{"matcher": {"id": "byName", "options": "fault"},
                          "properties": [{"id": "mappings", "value": bool_mapping("FAULT", "ok")}]}]),
        Panel("stat", "Reservoir", [target(latest("cdu", {"reservoir_level": "reservoir"}, CDU))], "none",
              states=True, w=3, h=4,
              mappings=text_mapping({"ok": GREEN, "low": YELLOW, "empty": RED}),
              options={"graphMode": "none", "colorMode": "background"}),
        Panel("stat", "Flow / setpoint",
              [target('SELECT last("flow_lpm") / last("flow_setpoint_lpm") * 100 AS "flow" FROM "cdu" '
                      f"WHERE {CDU} AND $timeFilter")],
              "percent", w=3, h=4, decimals=0,
              thresholds=relative_steps("cdu-flow-low"),
              description="cdu-flow-low: warning below 90 %, critical below 70 % of the flow setpoint."),
        Panel("stat", "Delta-T",
              [target('SELECT last("return_temp_c") - last("supply_temp_c") AS "delta_t" FROM "cdu" '
                      f"WHERE {CDU} AND $timeFilter")],
              "kelvin", w=3, h=4, decimals=1, thresholds=relative_steps("cdu-delta-t"),
              description="cdu-delta-t: warning above 15 K (flow starvation)."),
        Panel("stat", "Heat removed", [target(latest("cdu", {"heat_removed_kw": "heat"}, CDU))], "kwatt",
              w=3, h=4, decimals=0, color_mode="fixed"),
        Panel("timeseries", "TCS supply and return",
              [target(series("cdu", {"supply_temp_c": "supply", "return_temp_c": "return",
                                     "supply_temp_setpoint_c": "setpoint"}, CDU))], "celsius", w=8, h=8,
              description="cdu-supply-temp warns at setpoint + 2 K and is critical at setpoint + 5 K.",
              overrides=[{"matcher": {"id": "byName", "options": "setpoint"}, "properties": [
                  {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}]}]),
        Panel("timeseries", "Delta-T (return - supply)",
              [target('SELECT mean("return_temp_c") - mean("supply_temp_c") AS "TCS delta-T", '
                      'mean("facility_return_temp_c") - mean("facility_supply_temp_c") AS "facility delta-T" '
                      f'FROM "cdu" WHERE {CDU} AND $timeFilter GROUP BY time($__interval) fill(null)')],
              "kelvin", w=8, h=8, thresholds=relative_steps("cdu-delta-t")),
        Panel("timeseries", "Facility supply and return",
              [target(series("cdu", {"facility_supply_temp_c": "facility supply",
                                     "facility_return_temp_c": "facility return"}, CDU))], "celsius", w=8, h=8),
        Panel("timeseries", "Flow against required", [
            target(series("cdu", {"flow_lpm": "flow", "flow_setpoint_lpm": "setpoint"}, CDU), "A"),
            target('SELECT sum("required") AS "required by racks" FROM (SELECT mean("flow_required_lpm") AS '
                   '"required" FROM "rack" WHERE "cdu" =~ /^$cdu$/ AND $timeFilter GROUP BY time($__interval), '
                   '"rack") WHERE $timeFilter GROUP BY time($__interval) fill(null)', "B"),
        ], "flowlpm", w=8, h=8, description="Required: 1.5 L/min per kW of the racks on this loop.",
            overrides=[{"matcher": {"id": "byName", "options": "required by racks"}, "properties": [
                {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                {"id": "color", "value": {"mode": "fixed", "fixedColor": RED}}]}]),
        Panel("timeseries", "Pressures",
              [target(series("cdu", {"supply_pressure_kpa": "supply", "return_pressure_kpa": "return",
                                     "diff_pressure_kpa": "differential"}, CDU))], "pressurekpa", w=8, h=8,
              description="A falling return pressure is a leak indicator; falling differential, loss of flow."),
        Panel("timeseries", "Pump speeds and valve",
              [target(series("cdu", {"pump1_speed_pct": "pump 1", "pump2_speed_pct": "pump 2",
                                     "valve_pct": "facility valve"}, CDU))],
              "percent", w=8, h=8, min=0, max=100, thresholds=steps((GREEN, None), (YELLOW, 95)),
              description="Sustained > 95 % pump speed or a valve at 100 % means no capacity left."),
        Panel("timeseries", "Heat removed against rack power", [
            target(series("cdu", {"heat_removed_kw": "heat removed"}, CDU), "A"),
            target('SELECT sum("power") AS "rack power" FROM (SELECT mean("power_kw") AS "power" FROM "rack" '
                   'WHERE "cdu" =~ /^$cdu$/ AND $timeFilter GROUP BY time($__interval), "rack") '
                   "WHERE $timeFilter GROUP BY time($__interval) fill(null)", "B"),
        ], "kwatt", w=12, h=8),
        Panel("timeseries", "CDU electrical power", [target(series("cdu", {"power_w": "power"}, CDU))],
              "watt", w=12, h=8),
        Panel("state-timeline", "Leaks and faults", [target(series(
            "cdu", {"leak": "leak", "pump_fault": "pump fault", "pump1_running": "pump 1",
                    "pump2_running": "pump 2"}, CDU, agg="last"))],
              "none", w=24, h=6, mappings=bool_mapping("LEAK / FAULT", "ok"),
              # A running pump is the good state: the pumps' rows read the other way round.
              overrides=[{"matcher": {"id": "byRegexp", "options": "^pump [0-9]+$"},
                          "properties": [{"id": "mappings", "value": PUMP_MAPPING}]}]),
    )
    return d


CHILLER = '"device" =~ /^$chiller$/'
# The chiller reports COP 0 while it does not run; a number there would be read against the thresholds.
COP_STOPPED = [{"type": "value", "options": {"0": {"text": "not running", "color": BLUE, "index": 0}}}]


def chillers() -> Dashboard:
    variables = [SITE_VAR, query_var("chiller", "Chiller", 'SHOW TAG VALUES FROM "chiller" WITH KEY = "device" '
                                     "WHERE " + SITE, multi=True, include_all=True)]
    d = Dashboard("dcim-chillers", "dcim / Chillers",
                  "Chilled water and condenser temperatures, status, power, cooling and COP.",
                  variables, [alarm_annotation(SITE + ' AND "device" =~ /^$chiller$/')])
    d.row("Chiller $chiller", repeat="chiller")
    d.add(
        Panel("stat", "Status", [target(latest("chiller", {"status": "status"}, CHILLER))], "none",
              states=True, w=4, h=4,
              mappings=text_mapping({"running": GREEN, "stopped": BLUE, "tripped": RED, "locked_out": RED}),
              options={"graphMode": "none", "colorMode": "background"},
              description="chiller-trip: tripped or locked out is critical."),
        Panel("stat", "Alarm", [target(latest("chiller", {"alarm": "alarm"}, CHILLER))], "none", states=True, w=4, h=4,
              mappings=bool_mapping("ALARM", "ok"), options={"graphMode": "none", "colorMode": "background"}),
        Panel("stat", "Leaving water", [target(latest("chiller", {"leaving_temp_c": "leaving",
                                                                  "setpoint_c": "setpoint"}, CHILLER))],
              "celsius", w=4, h=4, decimals=1, color_mode="fixed",
              description="chiller-leaving-temp warns at setpoint + 2 K, critical at setpoint + 4 K."),
        Panel("stat", "COP", [target(latest("chiller", {"cop": "COP"}, CHILLER))], "none", w=4, h=4, decimals=2,
              thresholds=pack_steps("cop"), mappings=COP_STOPPED, states=True,
              description="Cooling kW / electrical kW; chiller-cop warns below 4. A chiller that is not "
                          "running reports COP 0: shown as \"not running\", not as a poor COP."),
        Panel("stat", "Cooling / power", [target(latest("chiller", {"cooling_kw": "cooling",
                                                                    "power_kw": "power"}, CHILLER))],
              "kwatt", w=4, h=4, decimals=0, color_mode="fixed"),
        Panel("gauge", "Demand limit", [target(latest("chiller", {"demand_limit_pct": "demand limit"}, CHILLER))],
              "percent", w=4, h=4, min=0, max=100),
        Panel("timeseries", "Chilled water", [target(series(
            "chiller", {"leaving_temp_c": "leaving", "entering_temp_c": "entering", "setpoint_c": "setpoint"},
            CHILLER))], "celsius", w=8, h=8,
              overrides=[{"matcher": {"id": "byName", "options": "setpoint"}, "properties": [
                  {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}]}]),
        Panel("timeseries", "Condenser water", [target(series(
            "chiller", {"condenser_entering_temp_c": "entering", "condenser_leaving_temp_c": "leaving"},
            CHILLER))], "celsius", w=8, h=8),
        Panel("timeseries", "Cooling and electrical power", [target(series(
            "chiller", {"cooling_kw": "cooling", "power_kw": "electrical"}, CHILLER))], "kwatt", w=8, h=8),
        Panel("timeseries", "COP", [target(series("chiller", {"cop": "COP"}, CHILLER + ' AND "cop" > 0'))],
              "none", w=12, h=8, decimals=2, thresholds=pack_steps("cop"),
              description="While the chiller is not running (COP 0) there is no COP: a gap, not a line at 0."),
        Panel("state-timeline", "Run status", [target(series("chiller", {"status": "status"}, CHILLER,
                                                             agg="last"))],
              "none", w=12, h=8,
              mappings=text_mapping({"running": GREEN, "stopped": BLUE, "tripped": RED, "locked_out": RED})),
    )
    return d


def alarms() -> Dashboard:
    where = SITE + ' AND "severity" =~ /^$severity$/ AND "rule" =~ /^$rule$/'
    variables = [
        SITE_VAR,
        custom_var("severity", "Severity", ["critical", "warning"]),
        query_var("rule", "Rule", 'SHOW TAG VALUES FROM "alarm" WITH KEY = "rule" WHERE ' + SITE,
                  multi=True, include_all=True),
    ]
    d = Dashboard("dcim-alarms", "dcim / Alarms", "Active alarms, the event log and its annotations.",
                  variables, [alarm_annotation(where, "Alarms fired")], time_from="now-24h")
    d.add(
        alarm_table(where, w=24, h=9),
        Panel("timeseries", "Alarms fired", [target(
            'SELECT count("message") AS "fired" FROM "alarm" WHERE ' + where + " AND \"state\" = 'firing' AND "
            "$timeFilter GROUP BY time($__interval), \"severity\" fill(0)", alias="$tag_severity")],
              "none", w=12, h=8, custom={"drawStyle": "bars", "fillOpacity": 80, "stacking": {"mode": "normal"}},
              overrides=[
                  {"matcher": {"id": "byName", "options": "critical"},
                   "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": RED}}]},
                  {"matcher": {"id": "byName", "options": "warning"},
                   "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": YELLOW}}]}]),
        Panel("bargauge", "Most frequent", [target(
            'SELECT count("message") FROM "alarm" WHERE ' + where + " AND \"state\" = 'firing' AND $timeFilter "
            'GROUP BY "rule"', alias="$tag_rule")], "none", w=12, h=8, color_mode="continuous-YlRd"),
        Panel("table", "Event log", [target(
            'SELECT "state", "severity", "rule", "rack", "device", "message", "value", "threshold" FROM "alarm" '
            f"WHERE {where} AND $timeFilter ORDER BY time DESC LIMIT 1000", fmt="table")],
            "none", w=24, h=14,
            overrides=[{"matcher": {"id": "byName", "options": "state"},
                        "properties": [{"id": "mappings", "value": ALARM_STATE_COLOURS},
                                       {"id": "custom.cellOptions", "value": {"type": "color-background"}}]},
                       unit_override("Time", "dateTimeAsIso")]),
    )
    return d


DASHBOARDS = {"hall.json": hall, "rack.json": rack, "cooling.json": cooling, "chillers.json": chillers,
              "alarms.json": alarms}


def render_all() -> dict[str, str]:
    return {name: json.dumps(build().render(), indent=2, ensure_ascii=False) + "\n"
            for name, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if the JSON files are out of date")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render_all().items():
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"out of date (run grafana/build.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
