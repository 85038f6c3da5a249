"""`dcim demo` (what `make demo` runs): a simulated hall, an embedded broker, the daemon, live on the terminal.

Everything runs in one process: the simulators serve the configuration's devices on their real protocols,
the daemon polls them like real hardware, publishes through the broker (an embedded amqtt when the
configuration names none), and the terminal shows what a subscriber of that broker receives: readings,
device status and alarms. A short scenario injects faults (a CDU pump failure, a tripped PDU feed, a
chiller trip) and clears them, so the alarms show too. Ctrl-C stops everything cleanly.

On a terminal the screen is drawn with rich (colour, one layout that fits 120x40 and truncates long lists
with "+N more"; the daemon's log goes to a file so it cannot tear the screen). Anywhere else (CI, a pipe)
the demo prints plain status lines, no escape codes, and the log goes to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy as _copy
import errno
import io
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import aiomqtt
from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.layout import Layout
from rich.live import Live
from rich.panel import Panel
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from dcim.app.config import Config, ConfigError, load_config
from dcim.app.daemon import Daemon, stop_on_signals
from dcim.app.instance import StartupError
from dcim.app.simulate import run_simulators, wait_listening
from dcim.core.logs import setup_logging
from dcim.core.samples import Batch, DeviceStatus, Quality
from dcim.drivers.profiles import ProfileError, load_profile
from dcim.rules.metrics import DEAD_FEED_SHARE, MIN_RACK_KW
from dcim.simulators.plant import Plant

# How often the screen is redrawn, and how often a plain status line is printed when not on a terminal.
SCREEN_REFRESH_S = 1.0
STATUS_EVERY_S = 5.0
EVENTS_KEPT = 50

# Styles: device status, alarm severity, and what is held back.
STATUS_STYLE = {"online": "green", "degraded": "yellow", "offline": "bold red", "waiting": "dim"}
SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow"}
SUPPRESSED_STYLE = "dim"


async def start_broker() -> tuple[Any, int]:
    """An embedded amqtt broker on a port the kernel picks (bound, not probed: nothing can take it first);
    returns the broker and its port."""
    from amqtt.broker import Broker

    broker = Broker({
        "listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    })
    await broker.start()
    # amqtt keeps its asyncio server per listener; the bound port is only known from its socket.
    server = broker._servers["default"].instance
    port: int = server.sockets[0].getsockname()[1]
    return broker, port


# ---- ports the demo listens on ------------------------------------------------------------------------


@dataclass(frozen=True)
class Listener:
    """One address the demo binds, and what for (with the setting, where that is not obvious)."""

    what: str
    transport: str  # "tcp" or "udp"
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}/{self.transport} ({self.what})"


def listeners(config: Config, plant: Plant | None = None) -> list[Listener]:
    """The fixed addresses the demo must bind: the HTTP API and every simulated device. The embedded broker
    is not among them: it binds a port the kernel picks. UDP sockets a test hands over through the plant
    are already bound and not checked."""
    out: list[Listener] = []
    if config.http.enabled and config.http.port:
        out.append(Listener("HTTP API, http.port", "tcp", config.http.host, config.http.port))
    seen: dict[tuple[str, str, int], int] = {}
    for device in config.devices:
        if not (device.simulate and device.enabled):
            continue
        if plant is not None and device.id in plant.sockets:
            continue
        endpoint = getattr(device, "endpoint", None)
        if isinstance(endpoint, str):
            url = urlsplit(endpoint)
            place = ("tcp", url.hostname or "127.0.0.1", url.port or 4840)
        else:
            # SNMP agents answer datagrams; the other protocols' simulators are TCP servers.
            transport = "udp" if device.protocol == "snmp" else "tcp"
            place = (transport, str(getattr(device, "host", "127.0.0.1")), int(getattr(device, "port", 0)))
        if not place[2]:
            continue
        if place in seen:  # devices behind one address (Modbus unit ids) share one server
            index = seen[place]
            out[index] = Listener(f"{out[index].what}, {device.id}", *place)
            continue
        seen[place] = len(out)
        out.append(Listener(f"simulated {device.id}", *place))
    return out


def unavailable(wanted: Iterable[Listener]) -> list[tuple[Listener, str]]:
    """The listeners whose address cannot be bound now, each with the reason. Bound the way the servers
    bind (SO_REUSEADDR for TCP), so a port in TIME_WAIT is not reported and a held one is."""
    out: list[tuple[Listener, str]] = []
    for listener in wanted:
        family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
        kind = socket.SOCK_STREAM if listener.transport == "tcp" else socket.SOCK_DGRAM
        with socket.socket(family, kind) as sock:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((listener.host, listener.port))
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    reason = "in use"
                elif err.errno and not isinstance(err, socket.gaierror):
                    reason = os.strerror(err.errno).lower()
                else:
                    reason = str(err)
                out.append((listener, reason))
    return out


def ports_message(problems: list[tuple[Listener, str]], config_path: Path | str) -> str:
    """One line: which addresses, why, and what to do."""
    if all(reason == "in use" for _, reason in problems):
        items = ", ".join(str(listener) for listener, _ in problems)
        return (f"dcim demo: already in use: {items}; stop what holds {'it' if len(problems) == 1 else 'them'} "
                f"(another dcim demo or daemon? `ss -ltnup` names the process) or change the port in {config_path}")
    items = ", ".join(f"{listener}: {reason}" for listener, reason in problems)
    return f"dcim demo: cannot listen on {items}; check the address, or change it in {config_path}"


# ---- what the demo has seen ----------------------------------------------------------------------------


class View:
    """What the terminal shows: the latest readings from the pipeline, status and alarms from the broker."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.latest: dict[str, dict[str, Any]] = {}
        # Points the device's last poll could not read (a device that answers with holes is degraded).
        self.bad: dict[str, set[tuple[str, tuple[tuple[str, str], ...]]]] = {}
        self.status: dict[str, dict[str, Any]] = {}
        self.alarms: dict[str, dict[str, Any]] = {}
        self.messages = 0
        self.events: list[str] = []
        self.event_count = 0  # events ever seen (the list keeps the latest EVENTS_KEPT)
        # The clock the uptime and the event times are read from (a test freezes it to draw one frame twice).
        self.clock: Callable[[], float] = time.monotonic
        self.started = self.clock()
        # Where to find the demo's services; shown in the header (None: not started, or off). The API's
        # address is the daemon's HTTP API's (`http`) once it listens, unless set here.
        self.api_url: str | None = None
        self.http: Any = None
        self.broker: str | None = None
        self.log_file: str | None = None
        self.kinds = {d.id: d.kind for d in config.devices}
        # PDUs whose profile reads an energy counter of the whole PDU: only those have an energy column
        # entry (outlet counters are per outlet; power is never passed off as energy).
        self.energy_meters = {d.id for d in config.devices if d.kind == "pdu" and _has_energy_counter(d, config)}
        # Which feed of which rack each PDU serves, for its row and for telling a tripped feed.
        self.feeds: dict[str, tuple[str, str]] = {}
        for _, _, rack in config.racks():
            for side in ("a", "b"):
                feed = getattr(rack.feeds, side)
                if feed is not None:
                    self.feeds[feed.pdu] = (rack.id, side)

    # pipeline sink (readings as the daemon decoded them)
    def on_batch(self, batch: Batch) -> None:
        values = self.latest.setdefault(batch.device, {})
        # Only the device's own readings tell whether it is degraded: the metrics the rules derive for it
        # (measurement `plant` on a CDU) can lack inputs from elsewhere.
        own = batch.kind == self.kinds.get(batch.device)
        bad = self.bad.setdefault(batch.device, set())
        rows: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        for s in batch.samples:
            if not s.tags:
                values[s.point] = s.value if s.ok else None
            if not own:
                continue
            # By series: a probe's or a row's reading counts too. A BAD sample without tags stands for the
            # whole point (a table the agent did not answer): any good reading of the point ends it.
            if s.tags:
                rows.add((s.point, s.tags))
            if s.quality is Quality.GOOD:
                bad.discard((s.point, s.tags))
                if s.tags:
                    bad.discard((s.point, ()))
            else:
                bad.add((s.point, s.tags))
        if own:
            # A poll reports every row the device has: a row gone from it (an outlet removed, an agent's
            # ever-new indexes) is no longer unreadable, and the set stays as large as the device's last poll.
            bad.difference_update([key for key in bad if key[1] and key not in rows])

    def on_status(self, status: DeviceStatus) -> None:
        # Straight from the pipeline, like the readings: the broker's copy of the same change may lag
        # behind them on a busy machine (mqtt_message keeps whichever is newer).
        self._set_status(status.device, {"online": status.online, "error": status.error or None,
                                         "ts": status.ts_ns})

    def _set_status(self, device: str, state: dict[str, Any]) -> None:
        old = self.status.get(device, {}).get("ts")
        ts = state.get("ts")
        if isinstance(old, int) and isinstance(ts, int) and ts < old:
            return
        self.status[device] = state

    def event(self, text: str) -> None:
        self.events = [*self.events[-(EVENTS_KEPT - 1):], f"{self.uptime():5.0f}s  {text}"]
        self.event_count += 1

    def snapshot(self) -> View:
        """A copy to render from another thread while this one keeps changing (the entries of `status`
        and `alarms` are replaced, never changed in place; `latest` and `bad` entries are)."""
        copy = _copy.copy(self)
        copy.latest = {device: dict(values) for device, values in self.latest.items()}
        copy.bad = {device: set(points) for device, points in self.bad.items()}
        copy.status = dict(self.status)
        copy.alarms = dict(self.alarms)
        copy.events = list(self.events)
        return copy

    def api(self) -> str | None:
        """The base URL of the HTTP API (the web console is its `/`), once it listens."""
        if self.api_url is not None or self.http is None or self.http.port is None:
            return self.api_url
        host = str(self.http.config.host)
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.http.port}/"

    def uptime(self) -> float:
        return self.clock() - self.started

    def mqtt_message(self, topic: str, payload: bytes) -> None:
        self.messages += 1
        parts = topic.split("/")
        if len(parts) >= 4 and parts[2] == "status":
            self._set_status(parts[3], json.loads(payload) if payload else {})
        elif len(parts) >= 5 and parts[2] == "alarms":
            key = "/".join(parts[3:])
            if payload:
                if key not in self.alarms:
                    alarm = json.loads(payload)
                    held = f" (suppressed: {alarm['suppressed']})" if alarm.get("suppressed") else ""
                    self.event(f"ALARM {alarm.get('severity', '').upper()}: {alarm.get('message', key)}{held}")
                self.alarms[key] = json.loads(payload)
            elif key in self.alarms:
                self.event(f"resolved: {self.alarms.pop(key).get('message', key)}")

    # ---- derived states -------------------------------------------------------------------------------

    def feed_tripped(self, pdu: str) -> bool:
        """The PDU says its feed tripped, or it carries next to nothing of a rack that draws power (the rule
        engine's test for a dead feed, dcim.rules.metrics)."""
        if self.latest.get(pdu, {}).get("tripped") in (True, 1, "true", "tripped"):
            return True
        rack = self.feeds.get(pdu)
        if rack is None:
            return False
        values = self.latest.get(rack[0], {})
        total, kw = values.get("power_kw"), values.get(f"power_{rack[1]}_kw")
        return (isinstance(total, int | float) and isinstance(kw, int | float)
                and total > MIN_RACK_KW and kw < DEAD_FEED_SHARE * total)

    def device_state(self, device: str) -> tuple[str, str]:
        """("online" | "degraded" | "offline" | "waiting", why)."""
        state = self.status.get(device)
        if state is None:
            return "waiting", ""
        if not state.get("online", True):
            return "offline", str(state.get("error") or "")
        if device in self.feeds and self.feed_tripped(device):
            return "degraded", "feed tripped"
        own = [a for a in self.alarms.values() if a.get("subject") == device and not a.get("suppressed")]
        if own:
            return "degraded", str(own[0].get("message", ""))
        bad = self.bad.get(device)
        if bad:
            return "degraded", f"{len(bad)} point(s) unreadable"
        return "online", ""

    def sorted_alarms(self) -> list[dict[str, Any]]:
        # Suppressed alarms last, each with the alarm that suppresses it: they are not the fault to act on.
        return sorted(self.alarms.values(), key=lambda a: (bool(a.get("suppressed")),
                                                           a.get("severity") != "critical", a.get("key", "")))

    def hall_kw(self) -> float | None:
        values = [self.latest.get(r.id, {}).get("power_kw") for _, _, r in self.config.racks()]
        known = [v for v in values if isinstance(v, int | float)]
        return sum(known) if known else None

    # ---- plain text (not a terminal) ---------------------------------------------------------------------

    def status_line(self) -> str:
        """One line: uptime, devices online, alarms, hall power."""
        states = [self.device_state(d.id)[0] for d in self.config.devices]
        held = sum(1 for a in self.alarms.values() if a.get("suppressed"))
        critical = sum(1 for a in self.alarms.values() if a.get("severity") == "critical" and not a.get("suppressed"))
        power = self.hall_kw()
        return (f"[{self.uptime():5.0f}s] devices {states.count('online')} online, "
                f"{states.count('degraded')} degraded, {states.count('offline')} offline, "
                f"{states.count('waiting')} waiting | alarms {len(self.alarms)} ({critical} critical, "
                f"{held} suppressed) | hall {fmt(power, ' kW')} | {self.messages} MQTT messages")

    def render(self) -> str:
        """The whole state as plain text (the summary printed when the demo stops, off a terminal)."""
        out = [f"dcim demo: site {self.config.site.id}   up {self.uptime():.0f}s   "
               f"{self.messages} MQTT messages received", f"HTTP API and console: {self.api() or 'off'}", ""]
        racks = self.latest
        rack_rows = [(r.id, racks.get(r.id, {})) for _, _, r in self.config.racks()]
        if any(v for _, v in rack_rows):
            out.append(f"{'rack':<8}{'power':>10}{'util':>8}{'headroom':>10}{'flow req/got':>16}")
            for rack_id, v in rack_rows:
                flows = f"{fmt(v.get('flow_required_lpm'), '', 0)}/{fmt(v.get('flow_delivered_lpm'), '', 0)}"
                out.append(f"{rack_id:<8}{fmt(v.get('power_kw'), ' kW'):>10}{fmt(v.get('utilization_pct'), '%', 0):>8}"
                           f"{fmt(v.get('redundant_headroom_kw'), ' kW'):>10}{flows:>16}")
            out.append("")
        for device in self.config.devices:
            state, why = self.device_state(device.id)
            shown = f"{state} ({why})" if why and state != "online" else state
            out.append(f"{device.id:<10}{device.kind:<8}{shown:<12} {' '.join(readings(device.kind, self, device.id))}")
        out.append("")
        held = sum(1 for a in self.alarms.values() if a.get("suppressed"))
        out.append(f"active alarms ({len(self.alarms)}, {held} suppressed):")
        for alarm in self.sorted_alarms():
            severity = "suppr." if alarm.get("suppressed") else alarm.get("severity", "?")
            why = f"  [{alarm['suppressed']}]" if alarm.get("suppressed") else ""
            out.append(f"  {severity:<9}{alarm.get('subject', ''):<10}{alarm.get('message', '')}{why}")
        if self.events:
            out += ["", "events:", *[f"  {e}" for e in self.events[-6:]]]
        return "\n".join(out)


def _has_energy_counter(device: Any, config: Config) -> bool:
    name = getattr(device, "profile", None)
    if not isinstance(name, str):
        return False
    try:
        profile = load_profile(name, config.extra_profile_dirs())
    except ProfileError:
        return False
    return any(p.name == "energy_kwh" and p.measurement in (None, device.kind) and not getattr(p, "index_tag", None)
               for p in profile.points)


def fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "--"
    if isinstance(value, bool):
        return "YES" if value else "no"
    if isinstance(value, float | int):
        return f"{value:.{digits}f}{unit}"
    return str(value)


def _kw(watts: Any) -> float | None:
    return watts / 1000 if isinstance(watts, int | float) and not isinstance(watts, bool) else None


def pdu_power(view: View, pdu: str) -> str:
    """A PDU's power in kW; "tripped" for a dead feed, never a 0 that reads like an idle rack."""
    if view.feed_tripped(pdu):
        return "tripped"
    return fmt(_kw(view.latest.get(pdu, {}).get("power_w")), "", 2)


def readings(kind: str, view: View, device: str) -> list[str]:
    """The few readings that tell a device's state at a glance, as short phrases."""
    v = view.latest.get(device, {})
    if kind == "cdu":
        # Most telling first: a cell cut at the screen's edge loses the least important reading.
        return [*(["LEAK"] if v.get("leak") else []),
                f"sup {fmt(v.get('supply_temp_c'))} ret {fmt(v.get('return_temp_c'))} C",
                f"{fmt(v.get('flow_lpm'), '', 0)} L/min",
                f"pumps {fmt(v.get('pump1_speed_pct'), '', 0)}/{fmt(v.get('pump2_speed_pct'), '', 0)}%",
                f"dP {fmt(v.get('diff_pressure_kpa'), '', 0)} kPa"]
    if kind == "pdu":
        # Power as power (kW); energy only where the PDU has an energy counter (both shipped profiles do).
        energy = [f"energy {fmt(v.get('energy_kwh'), ' kWh', 0)}"] if device in view.energy_meters else []
        return [f"power {pdu_power(view, device)}{'' if view.feed_tripped(device) else ' kW'}", *energy]
    if kind == "chiller":
        return [fmt(v.get("status")), f"leaving {fmt(v.get('leaving_temp_c'))} C (set {fmt(v.get('setpoint_c'))})",
                f"{fmt(v.get('cooling_kw'), '', 0)} kW", f"COP {fmt(v.get('cop'), '', 2)}"]
    return [f"{k} {fmt(val)}" for k, val in list(v.items())[:4]]


# ---- the screen (rich) ---------------------------------------------------------------------------------


class Fit:
    """A renderable built for the height its layout region gives it, so a long list ends in "+N more"
    instead of being cut off silently."""

    def __init__(self, build: Callable[[int], RenderableType]) -> None:
        self.build = build

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.build(options.height or console.height)


def status_text(state: str, why: str = "") -> Text:
    text = Text(state, style=STATUS_STYLE.get(state, ""))
    if why and state != "online":
        text.append(f" {why}", style="dim")
    return text


@dataclass(frozen=True)
class Col:
    """A table column: names and numbers keep their width (`fixed`), free text takes the rest (`ratio`)."""

    name: str
    justify: str = "left"
    fixed: int | None = None
    ratio: int | None = None


def _table(*columns: Col) -> Table:
    """A table without outer border (the panel around it is the border); one line per row, cells cut with an
    ellipsis, so a row never wraps into a second line."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True,
                  expand=True, header_style="bold", show_header=True)
    for col in columns:
        table.add_column(col.name, justify=col.justify,  # type: ignore[arg-type]
                         no_wrap=True, overflow="ellipsis", min_width=col.fixed, max_width=col.fixed,
                         ratio=col.ratio)
    return table


def _fill(table: Table, rows: list[list[RenderableType]], room: int, more: Callable[[int], str]) -> None:
    """Up to `room` rows; when they do not all fit, the last line (the table's caption, as wide as the
    table) says how many are left out."""
    shown = rows
    if len(rows) > room:
        shown = rows[:max(room - 1, 0)]
        if room > 0:
            table.caption = Text(more(len(rows) - len(shown)), style="italic")
            table.caption_justify = "left"
    for row in shown:
        table.add_row(*row)


# Lines a panel with a table takes besides its rows: two borders, the header and its rule.
PANEL_CHROME = 4


def _racks(view: View, height: int) -> RenderableType:
    table = _table(Col("rack", fixed=_id_width(r.id for _, _, r in view.config.racks()) + 1),
                   Col("power kW", "right", 8), Col("budget", "right", 6), Col("feed A/B kW", "right", 12),
                   Col("headroom", "right", 8), Col("flow L/min", "right", 10))
    rows: list[list[RenderableType]] = []
    for _, _, rack in view.config.racks():
        v = view.latest.get(rack.id, {})
        util = v.get("utilization_pct")
        util_style = "bold red" if isinstance(util, int | float) and util >= 100 else (
            "yellow" if isinstance(util, int | float) and util >= 90 else "")
        feeds = Text()
        for i, side in enumerate(("a", "b")):
            feed = getattr(rack.feeds, side)
            if i:
                feeds.append("/")
            if feed is None:
                feeds.append("-")
            elif view.feed_tripped(feed.pdu):
                feeds.append("tripped", style="bold red")
            else:
                feeds.append(fmt(v.get(f"power_{side}_kw")))
        headroom = v.get("redundant_headroom_kw")
        head_style = "red" if isinstance(headroom, int | float) and headroom < 0 else ""
        flows = f"{fmt(v.get('flow_required_lpm'), '', 0)}/{fmt(v.get('flow_delivered_lpm'), '', 0)}"
        rows.append([rack.id, fmt(v.get("power_kw")), Text(fmt(util, "%", 0), style=util_style), feeds,
                     Text(fmt(headroom), style=head_style), flows])
    _fill(table, rows, height - PANEL_CHROME, lambda n: f"+{n} more racks")
    return Panel(table, height=height, title=f"racks  hall {fmt(view.hall_kw(), ' kW')}", title_align="left",
                 border_style="blue")


def _plant(view: View, height: int) -> RenderableType:
    table = _table(Col("device", fixed=_id_width(d.id for d in view.config.devices if d.kind != "pdu")),
                   Col("status", fixed=8), Col("readings", ratio=1))
    rows: list[list[RenderableType]] = []
    for device in view.config.devices:
        if device.kind == "pdu":
            continue
        state, _ = view.device_state(device.id)
        rows.append([device.id, status_text(state), "  ".join(readings(device.kind, view, device.id))])
    _fill(table, rows, height - PANEL_CHROME, lambda n: f"+{n} more devices")
    return Panel(table, height=height, title="cooling", title_align="left", border_style="blue")


def _pdus(view: View, height: int) -> RenderableType:
    table = _table(*_pdu_columns(view))
    rows: list[list[RenderableType]] = []
    # Offline and degraded PDUs first: with more PDUs than lines, the ones to look at stay visible.
    order = {"offline": 0, "degraded": 1, "waiting": 2, "online": 3}
    pdus = [(view.device_state(d.id), d.id) for d in view.config.devices if d.kind == "pdu"]
    for (state, _), pdu in sorted(pdus, key=lambda p: order[p[0][0]]):
        rack = view.feeds.get(pdu)
        tripped = view.feed_tripped(pdu)
        energy = fmt(view.latest.get(pdu, {}).get("energy_kwh"), "", 0) if pdu in view.energy_meters else "n/a"
        rows.append([pdu, f"{rack[0]}/{rack[1].upper()}" if rack else "-", status_text(state),
                     Text(pdu_power(view, pdu), style="bold red" if tripped else ""),
                     *([energy] if view.energy_meters else [])])
    _fill(table, rows, height - PANEL_CHROME, lambda n: f"+{n} more PDUs")
    return Panel(table, height=height, title="PDUs", title_align="left", border_style="blue")


def _pdu_columns(view: View) -> list[Col]:
    return [Col("PDU", fixed=_id_width(d.id for d in view.config.devices if d.kind == "pdu")),
            Col("feed", fixed=max(_id_width(r.id for _, _, r in view.config.racks()) + 2, 4)),
            Col("status", fixed=8), Col("power kW", "right", 8),
            *([Col("energy kWh", "right", 10)] if view.energy_meters else [])]


def _since(ts_ns: Any) -> str:
    if not isinstance(ts_ns, int):
        return ""
    return datetime.fromtimestamp(ts_ns / 1e9).strftime("%H:%M:%S")


def _note(alarm: dict[str, Any]) -> Text:
    held = str(alarm.get("suppressed") or "")
    if held:
        return Text(f"suppressed: {held}", style=SUPPRESSED_STYLE)
    return Text("acknowledged", style="cyan") if alarm.get("acknowledged") else Text("")


def _alarms(view: View, height: int) -> RenderableType:
    alarms = view.sorted_alarms()
    room = height - PANEL_CHROME
    # The note (why an alarm is suppressed) is read in full where it fits; the message gives way first.
    notes = [len(_note(a).plain) for a in (alarms[:room] if len(alarms) <= room else alarms[:room - 1])]
    table = _table(Col("severity", fixed=8), Col("subject", fixed=_id_width(
                       [*(d.id for d in view.config.devices), *(r.id for _, _, r in view.config.racks())])),
                   Col("alarm", ratio=1), Col("since", fixed=8), Col("", fixed=min(max(notes, default=1), 50)))
    rows: list[list[RenderableType]] = []
    for alarm in alarms:
        severity = str(alarm.get("severity", "?"))
        held = str(alarm.get("suppressed") or "")
        style = SUPPRESSED_STYLE if held else SEVERITY_STYLE.get(severity, "")
        rows.append([Text(severity, style=style), Text(str(alarm.get("subject", "")), style="dim" if held else ""),
                     Text(str(alarm.get("message", "")), style="dim" if held else ""),
                     Text(_since(alarm.get("ts")), style="dim"), _note(alarm)])
    left_out = alarms[max(room - 1, 0):]
    _fill(table, rows, room,
          lambda n: f"+{n} more ({sum(1 for a in left_out if a.get('suppressed'))} suppressed)")
    suppressed = sum(1 for a in alarms if a.get("suppressed"))
    critical = sum(1 for a in alarms if a.get("severity") == "critical" and not a.get("suppressed"))
    title = f"alarms  {len(alarms)} active, {critical} critical, {suppressed} suppressed"
    border = "red" if critical else "yellow" if len(alarms) > suppressed else "green"
    body: RenderableType = table if alarms else Text("no active alarms", style="green")
    return Panel(body, height=height, title=title, title_align="left", border_style=border)


def _events(view: View, height: int) -> RenderableType:
    room = max(height - 2, 0)
    lines = [Text(e, no_wrap=True, overflow="ellipsis",
                  style="red" if "ALARM CRITICAL" in e else "yellow" if "ALARM" in e else
                  "green" if "resolved" in e else "") for e in (view.events[-room:] if room else [])]
    return Panel(Group(*lines), height=height, title="events", title_align="left", border_style="blue")


def _id_width(ids: Iterable[str]) -> int:
    """Room for the longest name, within reason (a very long id is cut rather than squeezing the rest)."""
    return min(max((len(i) for i in ids), default=4), 16)


def _header(view: View) -> RenderableType:
    site = view.config.site
    top = Text.assemble(("dcim demo", "bold"), f"  site {site.id}", (f" ({site.name})" if site.name else ""),
                        f"   up {view.uptime():.0f}s   {view.messages} MQTT messages   Ctrl-C stops", style="")
    where = Text.assemble(("HTTP API + console ", "bold"), (view.api() or "starting", "bold cyan underline"))
    if view.broker:
        where.append(f"   MQTT {view.broker}")
    if view.log_file:
        where.append(f"   log {view.log_file}", style="dim")
    top.no_wrap = where.no_wrap = True
    top.overflow = where.overflow = "ellipsis"
    return Text("\n").join([top, where])


def screen(view: View, height: int = 40) -> Layout:
    """The whole screen for a terminal `height` lines tall: header, racks and cooling beside the PDUs,
    the alarms, the latest events. Lists that do not fit end in "+N more"."""
    racks = sum(1 for _ in view.config.racks())
    plant = sum(1 for d in view.config.devices if d.kind != "pdu")
    pdus = sum(1 for d in view.config.devices if d.kind == "pdu")
    header_h, events_h, alarms_min = 2, 7, 8
    body_h = max(min(max(racks + plant + 2 * PANEL_CHROME, pdus + PANEL_CHROME),
                     height - header_h - events_h - alarms_min), 2 * PANEL_CHROME)
    racks_h = min(racks + PANEL_CHROME, max(body_h - plant - PANEL_CHROME, body_h // 2))
    layout = Layout()
    layout.split_column(Layout(_header(view), name="header", size=header_h), Layout(name="body", size=body_h),
                        Layout(Fit(lambda h: _alarms(view, h)), name="alarms", ratio=1),
                        Layout(Fit(lambda h: _events(view, h)), name="events", size=events_h))
    # The PDUs' column as wide as its table needs (cells; between two, a padding and the box's divider; the
    # panel's border and padding); the racks and cooling take the rest.
    pdu_columns = _pdu_columns(view)
    pdus_w = sum(c.fixed or 0 for c in pdu_columns) + 2 * (len(pdu_columns) - 1) + 4
    left = Layout(name="left", ratio=1)
    left.split_column(Layout(Fit(lambda h: _racks(view, h)), name="racks", size=racks_h),
                      Layout(Fit(lambda h: _plant(view, h)), name="cooling", ratio=1))
    layout["body"].split_row(left, Layout(Fit(lambda h: _pdus(view, h)), name="pdus", size=pdus_w))
    return layout


# ---- the fault story -----------------------------------------------------------------------------------


Step = tuple[float, str, Callable[[Plant], None]]


def scenario(config: Config) -> list[Step]:
    """A fault story over the devices the configuration has."""
    steps: list[Step] = []
    cdus = [d.id for d in config.devices if d.kind == "cdu" and d.simulate]
    pdus = [d.id for d in config.devices if d.kind == "pdu" and d.simulate and d.feed == "a"] or [
        d.id for d in config.devices if d.kind == "pdu" and d.simulate]
    chillers = [d.id for d in config.devices if d.kind == "chiller" and d.simulate]
    if cdus:
        cdu = cdus[0]
        # Held 40 s: past the 30 s the rack power budget rule waits, so the budget its cooling supports
        # (derated while the CDU runs on its last pump, or none) is seen to fire before the pumps are back.
        steps += [(20, f"inject: pump failure on {cdu}", lambda p: p.inject(cdu, "pump_failure")),
                  (60, f"clear: pumps of {cdu} restored", lambda p: p.clear(cdu, "pump_failure"))]
    if pdus:
        pdu = pdus[0]
        steps += [(65, f"inject: feed trip on {pdu}", lambda p: p.inject(pdu, "feed_trip")),
                  (95, f"clear: feed {pdu} restored", lambda p: p.clear(pdu, "feed_trip"))]
    if chillers:
        # The lead trips while the standby is locked out: no chiller runs, the facility water warms and the
        # cooling-plant rules raise "cooling capacity lost" and the facility-supply alarm. A reset does not
        # restart a tripped chiller; the operator's restart does, and both alarms resolve.
        ch = chillers[0]
        standby = chillers[1:2]
        if standby:
            steps.append((105, f"inject: standby {standby[0]} locked out", lambda p: p.inject(standby[0], "lockout")))
        steps += [(110, f"inject: {ch} trips", lambda p: p.inject(ch, "trip")),
                  (210, f"clear: {ch} reset (stays stopped)", lambda p: p.clear(ch, "trip")),
                  (215, f"restart: {ch} started", lambda p: p.write(ch, "running", True))]
        if standby:
            steps.append((220, f"clear: standby {standby[0]} lockout", lambda p: p.clear(standby[0], "lockout")))
    return steps


async def play(steps: list[Step], plant: Plant, view: View) -> None:
    started = time.monotonic()
    for at, text, action in steps:
        await asyncio.sleep(max(0.0, at - (time.monotonic() - started)))
        action(plant)
        view.event(text)


# ---- running it ----------------------------------------------------------------------------------------


async def watch_broker(config: Config, view: View) -> None:
    proto = aiomqtt.ProtocolVersion.V5 if config.mqtt.protocol == "5" else aiomqtt.ProtocolVersion.V311
    while True:
        try:
            async with aiomqtt.Client(config.mqtt.host or "", config.mqtt.port, protocol=proto,
                                      identifier=f"dcim-demo-view-{os.getpid()}") as client:
                await client.subscribe(f"{config.mqtt.prefix}/#", qos=1)
                async for message in client.messages:
                    view.mqtt_message(str(message.topic), bytes(message.payload))
        except aiomqtt.MqttError:
            await asyncio.sleep(1.0)


class Frame:
    """Screen lines rendered elsewhere, shown as they are."""

    def __init__(self, lines: list[list[Segment]]) -> None:
        self.lines = lines

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for i, line in enumerate(self.lines):
            if i:
                yield Segment.line()
            yield from line


def render_frame(view: View, width: int, height: int) -> Frame:
    """The screen as lines of styled segments, on a console of its own (safe in a worker thread)."""
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True)
    return Frame(console.render_lines(screen(view, height), console.options.update_dimensions(width, height)))


async def show_live(view: View, console: Console) -> None:
    """Redraw the screen in place (the terminal's alternate screen) until cancelled. Laying out the tables
    is the costly part (tens of milliseconds, more on a loaded machine): it runs in a worker thread on a
    copy of the view, so the event loop keeps polling on time and only writes the finished lines."""
    with Live(console=console, screen=True, auto_refresh=False, redirect_stdout=False,
              redirect_stderr=False) as live:
        while True:
            width, height = console.size
            frame = await asyncio.to_thread(render_frame, view.snapshot(), width, height)
            live.update(frame, refresh=True)
            await asyncio.sleep(SCREEN_REFRESH_S)


async def show_plain(view: View, out: TextIO) -> None:
    """A status line now and every STATUS_EVERY_S, each after the events that happened since the last."""
    printed = 0
    announced = False
    while True:
        if not announced and view.api() is not None:
            print(f"HTTP API and console: {view.api()}   MQTT broker: {view.broker}", file=out)
            announced = True
        fresh = min(view.event_count - printed, len(view.events))
        for line in view.events[len(view.events) - fresh:]:
            print(f"  {line}", file=out)
        printed = view.event_count
        print(view.status_line(), file=out, flush=True)
        await asyncio.sleep(STATUS_EVERY_S)


async def demo(config: Config, *, duration: float | None, faults: bool, out: TextIO | None = None,
               plant: Plant | None = None, stop: asyncio.Event | None = None,
               view: View | None = None) -> None:
    """Run the demo until Ctrl-C, `duration` or `stop`. `out` (stdout by default) decides the form: the
    live screen on a terminal, plain lines otherwise."""
    out = out if out is not None else sys.stdout
    tty = out.isatty()
    simulated = sum(1 for d in config.devices if d.simulate)
    print(f"dcim demo: starting the simulators of {simulated} devices, the broker and the daemon "
          f"(site {config.site.id})", file=out, flush=True)
    broker = None
    view = view if view is not None else View(config)
    plant = plant if plant is not None else Plant(config)
    if config.mqtt.host is None:
        broker, port = await start_broker()
        config = config.model_copy(update={"mqtt": config.mqtt.model_copy(
            update={"host": "127.0.0.1", "port": port, "protocol": "3.1.1"})})
    view.broker = f"{config.mqtt.host}:{config.mqtt.port} ({'embedded' if broker else 'configured'}, " \
                  f"topics {config.mqtt.prefix}/#)"
    if stop is None:  # a caller's own event is its way to stop the demo; Ctrl-C otherwise
        stop = asyncio.Event()
        stop_on_signals(stop)
    loop = asyncio.get_running_loop()
    try:
        daemon = Daemon(config)
        daemon.pipeline.add_sink(view)
        async with asyncio.TaskGroup() as tg:
            listening = asyncio.Event()
            sims = tg.create_task(run_simulators(config, plant, ready=listening), name="simulators")
            await wait_listening(listening, sims)
            # --duration counts from a served hall: building the OPC UA servers' address space alone can take
            # longer than a short demo on a busy machine.
            if duration is not None:
                loop.call_later(duration, stop.set)
            running = tg.create_task(daemon.run(stop), name="daemon")
            view.http = daemon.http
            screen_task = (show_live(view, Console(file=out)) if tty else show_plain(view, out))
            helpers = [tg.create_task(watch_broker(config, view), name="demo-view"),
                       tg.create_task(screen_task, name="demo-screen")]
            if faults:
                helpers.append(tg.create_task(play(scenario(config), plant, view), name="demo-scenario"))
            await running
            for task in (*helpers, sims):
                task.cancel()
    finally:
        if broker is not None:
            with contextlib.suppress(Exception):
                await broker.shutdown()
    if tty:
        console = Console(file=out)
        console.print(screen(view, console.height))
        print("demo stopped cleanly", file=out, flush=True)
    else:
        print("\n" + view.render() + "\n\ndemo stopped cleanly", file=out, flush=True)


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


def run_demo(path: Path, *, duration: float | None = None, scenario: bool = True) -> int:
    try:
        config = load_config(path)
    except ConfigError as err:
        print(err.render(), file=sys.stderr)
        return 2
    # Before anything starts: an address the demo needs that something else holds is one line, not a
    # traceback from deep in a protocol library.
    problems = unavailable(listeners(config))
    if problems:
        print(ports_message(problems, path), file=sys.stderr)
        return 1
    log_file = None
    if sys.stdout.isatty():
        # The log would tear the live screen: it goes to a file next to the demo's state.
        Path(config.state_dir).mkdir(parents=True, exist_ok=True)
        log_file = open(Path(config.state_dir) / "demo.log", "a", encoding="utf-8")
        setup_logging("info", "console", stream=log_file)
    else:
        setup_logging("warning", "console")
    view = View(config)
    view.log_file = log_file.name if log_file is not None else None
    try:
        asyncio.run(demo(config, duration=duration, faults=scenario, view=view))
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # the last stop before the user: what failed, in one line each
        for leaf in _leaves(error):
            what = "cannot start" if isinstance(leaf, StartupError | OSError) else "stopped"
            print(f"dcim demo: {what}: {leaf if isinstance(leaf, StartupError) else f'{type(leaf).__name__}: {leaf}'}",
                  file=sys.stderr)
        return 1
    finally:
        if log_file is not None:
            log_file.close()
    return 0
