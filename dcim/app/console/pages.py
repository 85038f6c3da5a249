"""The console's HTML, server-rendered from plain Python: every value passes `esc` (html.escape), and
nothing is loaded from anywhere but this server (static/console.css, static/console.js)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote

from dcim.app.console.live import DeviceView, RackView
from dcim.core.samples import Sample

NS = 1_000_000_000
NAV = (("/", "Hall"), ("/devices", "Devices"), ("/alarms", "Alarms"), ("/events", "Events"))


def esc(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def when(ts_ns: int | None) -> str:
    if not ts_ns:
        return "-"
    return datetime.fromtimestamp(ts_ns / NS, UTC).strftime("%Y-%m-%d %H:%M:%S")


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def alarm_path(key: str, action: str) -> str:
    return f"/console/alarms/{quote(key, safe='')}/{action}"


def page(title: str, body: str, *, site: str, active: str, user: str | None, can_login: bool,
         live: str = "", flash: str = "", error: str = "", here: str = "/", csrf: str = "") -> str:
    links = "".join(
        f'<a href="{href}"{" class=on" if href == active else ""}>{esc(name)}</a>' for href, name in NAV)
    if user:
        who = (f'<form method=post action="/console/logout" class=inline>'
               f'<input type=hidden name=csrf value="{esc(csrf)}">'
               f'<span class=user>{esc(user)}</span> <button>log out</button></form>')
    elif can_login:
        who = f'<a href="/login?next={esc(quote(here, safe=""))}">log in</a>'
    else:
        who = '<span class=muted title="no http.token configured">read-only</span>'
    notes = ""
    if flash:
        notes += f'<p class="flash ok" role=status>{esc(flash)}</p>'
    if error:
        notes += f'<p class="flash err" role=alert>{esc(error)}</p>'
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><meta name=viewport content="width=device-width, initial-scale=1">
<title>{esc(title)} - dcim {esc(site)}</title>
<link rel=stylesheet href="/static/console.css">
<script src="/static/console.js" defer></script>
</head><body data-live="{esc(live)}">
<header><span class=brand>dcim <b>{esc(site)}</b></span><nav>{links}</nav>
<span id=conn class=conn title="live updates">offline</span><span class=who>{who}</span></header>
<main id=main>{notes}{body}</main>
</body></html>"""


# ---- the hall -------------------------------------------------------------------------------------------

def hall(racks: Sequence[RackView]) -> str:
    rooms: dict[str, dict[str, list[RackView]]] = {}
    for rack in racks:
        rooms.setdefault(rack.room, {}).setdefault(rack.row, []).append(rack)
    parts = ['<h1>Hall</h1>', _legend()]
    if not racks:
        parts.append("<p class=muted>No racks are configured (rooms: in the configuration).</p>")
    for room, rows in rooms.items():
        parts.append(f'<section class=room><h2>Room {esc(room)}</h2>')
        for row, cells in rows.items():
            parts.append(f'<div class=row><span class=rowname>Row {esc(row)}</span><div class=cells>')
            parts.extend(_cell(rack) for rack in cells)
            parts.append("</div></div>")
        parts.append("</section>")
    return "\n".join(parts)


def _cell(rack: RackView) -> str:
    util = f"{rack.utilization_pct:.0f}%" if rack.utilization_pct is not None else "-"
    power = f"{rack.power_kw:.1f} kW" if rack.power_kw is not None else "no reading"
    coolant = {"none": "air", "ok": "coolant ok"}.get(rack.coolant, f"coolant {rack.coolant}")
    alarms = f"{rack.alarms} alarm{'s' if rack.alarms != 1 else ''}" if rack.alarms else ""
    return (f'<a class="{esc(rack.css())}" id="rack-{esc(rack.id)}" data-rack="{esc(rack.id)}" '
            f'data-status="{esc(rack.status)}" href="/racks/{quote(rack.id, safe="")}" title="{esc(rack.title())}">'
            f'<span class=rid>{esc(rack.id)}</span><span class=util data-f=util>{esc(util)}</span>'
            f'<span class=pw data-f=power>{esc(power)}</span>'
            f'<span class=cool data-f=coolant>{esc(coolant)}</span>'
            f'<span class=al data-f=alarms>{esc(alarms)}</span></a>')


def _legend() -> str:
    items = [("s-critical", "critical alarm"), ("s-warning", "warning"), ("u0", "< 50 %"), ("u1", "50-75 %"),
             ("u2", "75-90 %"), ("u3", ">= 90 % of budget"), ("unk", "no reading")]
    return "<p class=legend>" + "".join(f'<span class="sw {c}"></span>{esc(t)} ' for c, t in items) + "</p>"


# ---- a rack ---------------------------------------------------------------------------------------------

def rack_page(rack: RackView, metrics: Iterable[Sample], sections: Sequence[tuple[str, str, Iterable[Sample]]],
              alarms: Sequence[Any], devices: Sequence[DeviceView], coolant: Sequence[Sample] | None = None) -> str:
    """`sections`: (title, device id, that device's latest samples) for its feeds, its CDU, its devices;
    `coolant`: the CDU's latest samples (None for an air-cooled rack)."""
    parts = [f'<h1>Rack {esc(rack.id)} <span class="badge s-{esc(rack.status)}">{esc(rack.status)}</span></h1>',
             f'<p class=muted>room {esc(rack.room)}, row {esc(rack.row)}, {esc(rack.cooling)}-cooled, budget '
             f'{rack.budget_kw:g} kW{", CDU " + esc(rack.cdu) if rack.cdu else ""}</p>']
    if coolant is not None:
        parts.append("<h2>Coolant</h2>" + _coolant(coolant))
    parts.append("<h2>Rack metrics</h2>" + _scalars(list(metrics)))
    if alarms:
        parts.append("<h2>Active alarms</h2>" + alarm_table(alarms, csrf=None))
    status = {d.id: d for d in devices}
    for title, device, samples in sections:
        view = status.get(device)
        badge = f' <span class="badge d-{esc(view.status)}">{esc(view.status)}</span>' if view else ""
        parts.append(f'<section class=dev><h2>{esc(title)}: {esc(device)}{badge}</h2>{_samples(list(samples))}'
                     "</section>")
    return "\n".join(parts)


# The loop at a glance: what an operator looks at first on a liquid rack.
COOLANT = (("supply_temp_c", "supply", "degC"), ("return_temp_c", "return", "degC"), ("flow_lpm", "flow", "L/min"),
           ("flow_setpoint_lpm", "flow setpoint", "L/min"), ("diff_pressure_kpa", "differential pressure", "kPa"),
           ("pump_fault", "pump fault", ""), ("leak", "leak", ""))


def _coolant(samples: Sequence[Sample]) -> str:
    scalars = {s.point: s for s in samples if not s.tags}
    cells = "".join(
        f"<tr><th>{esc(label)}</th><td class=c-{esc(point)}>{_value(scalars[point])} {esc(unit)}</td></tr>"
        for point, label, unit in COOLANT if point in scalars)
    return f"<table class=\"kv coolant\">{cells}</table>" if cells else "<p class=muted>no coolant readings yet</p>"


def _natural(text: str) -> tuple[Any, ...]:
    """Outlet 2 before outlet 10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text))


def _scalars(samples: list[Sample]) -> str:
    if not samples:
        return "<p class=muted>no readings yet</p>"
    rows = "".join(f"<tr><th>{esc(s.point)}</th><td>{_value(s)}</td></tr>"
                   for s in sorted(samples, key=lambda s: s.point))
    return f"<table class=kv>{rows}</table>"


def _value(sample: Sample) -> str:
    if not sample.ok:
        return f'<span class=bad title="{esc(sample.reason)}">{esc(sample.quality)}</span>'
    return esc(fmt(sample.value))


def _samples(samples: list[Sample]) -> str:
    """A device's scalars, then one table per row kind (phase, outlet, bank, probe): rows by index, points
    as columns."""
    scalars = [s for s in samples if not s.tags]
    tables: dict[str, dict[str, dict[str, Sample]]] = {}
    for sample in samples:
        if sample.tags:
            name = ",".join(k for k, _ in sample.tags)
            index = ",".join(v for _, v in sample.tags)
            tables.setdefault(name, {}).setdefault(index, {})[sample.point] = sample
    out = [_scalars(scalars)]
    for name, rows in tables.items():
        points = sorted({p for row in rows.values() for p in row})
        head = "".join(f"<th>{esc(p)}</th>" for p in points)
        body = "".join(
            f"<tr><th>{esc(index)}</th>" + "".join(
                f"<td>{_value(rows[index][p]) if p in rows[index] else '-'}</td>" for p in points) + "</tr>"
            for index in sorted(rows, key=_natural))
        out.append(f'<h3>{esc(name)}s</h3><table class="grid t-{esc(name)}"><tr><th>{esc(name)}</th>{head}</tr>'
                   f"{body}</table>")
    return "".join(out)


# ---- devices --------------------------------------------------------------------------------------------

def devices_page(devices: Sequence[DeviceView]) -> str:
    counts: dict[str, int] = {}
    for d in devices:
        counts[d.status] = counts.get(d.status, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    rows = "".join(
        f'<tr id="dev-{esc(d.id)}" class="d-{esc(d.status)}"><td>{esc(d.id)}</td><td>{esc(d.kind)}</td>'
        f'<td>{esc(d.protocol)}</td><td>{_rack_link(d.rack)}</td>'
        f'<td><span class="badge d-{esc(d.status)}">{esc(d.status)}</span></td><td>{when(d.last_poll_ns)}</td>'
        f"<td>{esc(d.reason)}</td></tr>" for d in devices)
    return (f"<h1>Devices</h1><p class=muted>{esc(summary) or 'no devices'}</p>"
            "<table class=list><tr><th>device</th><th>kind</th><th>protocol</th><th>rack</th><th>status</th>"
            f"<th>last good poll (UTC)</th><th>reason</th></tr>{rows}</table>")


def _rack_link(rack: str) -> str:
    return f'<a href="/racks/{quote(rack, safe="")}">{esc(rack)}</a>' if rack else "-"


# ---- alarms ---------------------------------------------------------------------------------------------

def alarms_page(alarms: Sequence[Any], windows: Sequence[Any], *, csrf: str | None, can_login: bool) -> str:
    parts = [f"<h1>Active alarms <span class=muted>({len(alarms)})</span></h1>"]
    if csrf is None:
        parts.append("<p class=muted>" + ('<a href="/login?next=/alarms">Log in</a> to acknowledge, shelve or '
                                          "open a maintenance window." if can_login else
                                          "Read-only: no http.token is configured, so nobody can log in.")
                     + "</p>")
    parts.append(alarm_table(alarms, csrf=csrf) if alarms else "<p class=muted>No alarm is firing.</p>")
    parts.append("<h2>Maintenance windows</h2>")
    if windows:
        parts.append("<table class=list><tr><th>id</th><th>subject</th><th>from (UTC)</th><th>until (UTC)</th>"
                     "<th>reason</th></tr>" + "".join(
                         f"<tr><td>{w.id}</td><td>{esc(w.subject)}</td><td>{when(w.start_ns)}</td>"
                         f"<td>{when(w.end_ns)}</td><td>{esc(w.reason)}</td></tr>" for w in windows) + "</table>")
    else:
        parts.append("<p class=muted>none</p>")
    if csrf is not None:
        parts.append(
            '<form method=post action="/console/maintenance" class=maint>'
            f'<input type=hidden name=csrf value="{esc(csrf)}">'
            '<label>rack or device <input name=subject required maxlength=64 size=12></label> '
            '<label>minutes <input name=minutes type=number min=1 max=44640 value=60 required></label> '
            '<label>reason <input name=reason maxlength=1000 size=24></label> '
            "<button>open maintenance window</button></form>")
    return "\n".join(parts)


def alarm_table(alarms: Sequence[Any], *, csrf: str | None) -> str:
    head = ("<tr><th>since (UTC)</th><th>severity</th><th>subject</th><th>alarm</th><th>message</th>"
            "<th>state</th>" + ("<th>actions</th>" if csrf is not None else "") + "</tr>")
    return f"<table class=list>{head}{''.join(_alarm_row(a, csrf) for a in alarms)}</table>"


def _alarm_row(alarm: Any, csrf: str | None) -> str:
    notes = []
    if alarm.acknowledged:
        notes.append(f"acknowledged by {esc(alarm.ack_by)}" + (f": {esc(alarm.ack_comment)}"
                                                               if alarm.ack_comment else ""))
    if alarm.shelved_until_ns:
        notes.append(f"shelved by {esc(alarm.shelved_by)} until {when(alarm.shelved_until_ns)}")
    if alarm.suppressed:
        notes.append(f'<span class=supp>suppressed: {esc(alarm.suppressed)}</span>')
    state = "<br>".join(notes) or "new"
    classes = f"a-{esc(alarm.severity)}" + (" suppressed" if alarm.suppressed else "") + (
        " acked" if alarm.acknowledged else "")
    actions = ""
    if csrf is not None:
        hidden = f'<input type=hidden name=csrf value="{esc(csrf)}">'
        ack = "" if alarm.acknowledged else (
            f'<form method=post action="{esc(alarm_path(alarm.key, "ack"))}" class=inline>{hidden}'
            '<input name=comment placeholder=comment maxlength=1000 size=10> <button class=ack>acknowledge'
            "</button></form>")
        if alarm.shelved_until_ns:
            shelve = (f'<form method=post action="{esc(alarm_path(alarm.key, "unshelve"))}" class=inline>{hidden}'
                      "<button>unshelve</button></form>")
        else:
            shelve = (f'<form method=post action="{esc(alarm_path(alarm.key, "shelve"))}" class=inline>{hidden}'
                      '<select name=minutes><option value=30>30 min</option><option value=60 selected>1 h</option>'
                      '<option value=240>4 h</option><option value=1440>24 h</option></select> '
                      "<button class=shelve>shelve</button></form>")
        maint = (f'<form method=post action="/console/maintenance" class=inline>{hidden}'
                 f'<input type=hidden name=subject value="{esc(alarm.subject)}">'
                 '<input type=hidden name=minutes value=60><input type=hidden name=reason value="from alarm">'
                 f'<button title="maintenance window on {esc(alarm.subject)} for 1 h">maintenance 1 h</button>'
                 "</form>")
        actions = f"<td class=acts>{ack} {shelve} {maint}</td>"
    return (f'<tr class="{classes}" data-key="{esc(alarm.key)}"><td>{when(alarm.fired_ns or alarm.since_ns)}</td>'
            f'<td><span class="badge s-{esc(alarm.severity)}">{esc(alarm.severity)}</span></td>'
            f"<td>{esc(alarm.subject)}</td><td>{esc(alarm.key)}</td><td>{esc(alarm.message)}</td>"
            f"<td>{state}</td>{actions}</tr>")


# ---- the event log --------------------------------------------------------------------------------------

def events_page(events: Sequence[dict[str, Any]]) -> str:
    rows = "".join(
        f'<tr class="e-{esc(e["source"])}"><td>{when(e["ts_ns"])}</td><td>{esc(e["source"])}</td>'
        f'<td>{esc(e["what"])}</td><td>{esc(e["subject"])}</td><td>{esc(e["detail"])}</td>'
        f'<td>{esc(e["by"])}</td></tr>' for e in events)
    return ("<h1>Event log</h1><p class=muted>Alarm state changes (the alarm store's history), operator "
            "actions and writes (the audit trail), newest first.</p>"
            "<table class=list><tr><th>time (UTC)</th><th>source</th><th>event</th><th>subject</th><th>detail</th>"
            f"<th>by</th></tr>{rows}</table>" if events else "<h1>Event log</h1><p class=muted>No events yet.</p>")


# ---- login ----------------------------------------------------------------------------------------------

def login_page(next_url: str, *, error: str = "", can_login: bool = True) -> str:
    if not can_login:
        return ("<h1>Log in</h1><p class=muted>No http.token is configured: the console is read-only and "
                "nobody can log in.</p>")
    problem = f'<p class="flash err" role=alert>{esc(error)}</p>' if error else ""
    return (f"<h1>Log in</h1>{problem}<form method=post action=\"/console/login\" class=login>"
            f'<input type=hidden name=next value="{esc(next_url)}">'
            "<label>your name (recorded with every action) <input name=user required maxlength=100 "
            'pattern="[^\\s:@]+" autocomplete=username></label>'
            "<label>password (the daemon's http.token) <input name=password type=password required "
            "autocomplete=current-password></label><button>log in</button></form>")


def data_script(name: str, data: Any) -> str:
    """JSON for the page's script, safe inside <script> (no `</` can close it)."""
    text = json.dumps(data).replace("</", "<\\/")
    return f'<script type="application/json" id="{esc(name)}">{text}</script>'
