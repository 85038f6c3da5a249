"""The demo's screen, rendered to a recording rich Console the size of a 120x40 terminal: at the busiest
moment (every device, a tripped feed, more alarms than fit, a long event history) it fits, keeps what matters
in view, says how many rows it left out, and shows where the HTTP API and console are."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from rich.console import Console

import dcim.drivers
from dcim.app.config import parse_config
from dcim.app.demo import View, render_frame, screen
from tests.demo.busy import API, EXAMPLE, OFFLINE, TRIPPED, alarm, busiest, send

WIDTH, HEIGHT = 120, 40
RED, BOLD_RED, GREEN, YELLOW, DIM = "\x1b[31m", "\x1b[1;31m", "\x1b[32m", "\x1b[33m", "\x1b[2m"


def draw(view: View, *, styles: bool = False) -> str:
    console = Console(width=WIDTH, height=HEIGHT, record=True, force_terminal=True, color_system="standard")
    console.print(screen(view, HEIGHT))
    return console.export_text(styles=styles)


def line_of(text: str, *needles: str) -> str:
    return next(line for line in text.splitlines() if all(n in line for n in needles))


def alarm_row(text: str, needle: str) -> int:
    """The number of the alarms panel's line with `needle` (an event line may say the same)."""
    return next(i for i, line in enumerate(text.splitlines())
                if needle in line and re.match(r"│ (critical|warning) ", line))


def test_busiest_moment_fits_120x40_and_says_what_it_left_out() -> None:
    view = busiest()
    text = draw(view)
    lines = text.splitlines()
    assert len(lines) <= HEIGHT
    assert max(len(line) for line in lines) <= WIDTH
    # Where to go next: the HTTP API and the console on it, and the broker.
    assert API in lines[1] and "MQTT 127.0.0.1:40123" in lines[1]
    # Every device of the example hall is on the screen, each with its status.
    for device in view.config.devices:
        assert device.id in text, device.id
    for device in OFFLINE:
        assert "offline" in line_of(text, device)
    # A tripped feed reads "tripped", not a 0 that looks like an idle rack.
    assert "tripped" in line_of(text, TRIPPED)
    assert "tripped/" in line_of(text, "│ A01 ")
    # Alarms: the visible rows and the "+N more" line account for every active alarm ...
    shown = [line for line in lines if re.match(r"│ (critical|warning) ", line)]
    more = re.search(r"\+(\d+) more \((\d+) suppressed\)", text)
    assert more is not None, "the alarms panel must say how many alarms it left out"
    assert len(shown) + int(more.group(1)) == len(view.alarms)
    # ... the critical, unsuppressed ones first: the faults to act on are never the ones left out.
    unsuppressed_critical = [a for a in view.alarms.values() if a["severity"] == "critical" and not a["suppressed"]]
    assert len(shown) <= len(unsuppressed_critical)
    assert all(line.startswith("│ critical") for line in shown)
    assert "suppressed:" not in "".join(shown)
    held = sum(1 for a in view.alarms.values() if a["suppressed"])
    assert int(more.group(2)) == held
    assert f"{len(view.alarms)} active" in text and f"{held} suppressed" in text
    # The newest events, each on one line (cut, not wrapped).
    assert "inject: chiller-1 trips" in text and "inject: pump failure on cdu-1" not in text
    assert line_of(text, "a long line that runs past").endswith("… │")


def test_suppressed_alarms_show_dim_with_the_reason() -> None:
    view = busiest(alarms_per_rack=0)
    alarm(view, "A01", "liquid-rack-coolant-flow", "warning", "A01 coolant flow below required",
          "inhibited by cdu-pump-fault/cdu-1")
    alarm(view, "B01", "liquid-rack-power-budget", "critical", "B01 power over budget", "shelved")
    alarm(view, "C01", "air-rack-branch-load", "warning", "C01 branch load over 80 %", "maintenance")
    styled = draw(view, styles=True)
    text = draw(view)
    for reason in ("inhibited by cdu-pump-fault/cdu-1", "shelved", "maintenance"):
        row = alarm_row(text, f"suppressed: {reason}")
        # The whole row is dim, the severity included: held back, not the fault to act on.
        severity = text.splitlines()[row].split()[1]
        assert f"{DIM}{severity}" in styled.splitlines()[row]
    # The unsuppressed criticals come first, coloured by severity.
    rows = [line for line in text.splitlines() if re.match(r"│ (critical|warning) ", line)]
    assert "suppressed" not in rows[0] and "suppressed" in rows[-1]
    assert f"{BOLD_RED}critical" in line_of(styled, "pump fault")


def test_devices_coloured_by_status() -> None:
    view = busiest(alarms_per_rack=0)
    styled = draw(view, styles=True)
    assert f"{GREEN}online" in line_of(styled, "apc-c01a")
    assert f"{BOLD_RED}offline" in line_of(styled, OFFLINE[0])
    assert f"{YELLOW}degraded" in line_of(styled, TRIPPED)      # answers, but its feed is dead
    assert re.search(r"\x1b\[1;31m *tripped", line_of(styled, TRIPPED))


def test_a_smaller_terminal_truncates_instead_of_overflowing() -> None:
    view = busiest()
    console = Console(width=100, height=30, record=True, force_terminal=True)
    console.print(screen(view, 30))
    lines = console.export_text().splitlines()
    assert len(lines) <= 30 and max(len(line) for line in lines) <= 100
    assert re.search(r"\+\d+ more PDUs", "\n".join(lines))
    assert API in "\n".join(lines)


def test_plain_text_names_power_and_energy_and_a_tripped_feed() -> None:
    text = busiest(alarms_per_rack=0).render()
    assert "power tripped" in line_of(text, TRIPPED)
    assert "power 71.23 kW  energy" not in text  # one space between phrases in the plain form
    assert "power 20.25 kW energy 20527 kWh" in line_of(text, "apc-c01a")
    assert f"HTTP API and console: {API}" in text


def test_energy_only_for_pdus_whose_profile_reads_an_energy_counter(tmp_path: Path) -> None:
    # A PDU profile without the PDU's energy counter (the outlet counters stay: they are per outlet).
    shipped = (Path(dcim.drivers.__file__).parent / "profiles" / "apc-rpdu2.yaml").read_text()
    lines = [line for line in shipped.splitlines() if not line.startswith("  - {name: energy_kwh, unit: kWh, oid: "
                                                                         "1.3.6.1.4.1.318.1.1.26.4.3.1.9.1")]
    assert len(lines) == len(shipped.splitlines()) - 1
    (tmp_path / "apc-no-energy.yaml").write_text("\n".join(lines).replace("name: apc-rpdu2", "name: apc-no-energy"))
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["profile_dirs"] = [str(tmp_path)]
    for device in raw["devices"]:
        if device["kind"] == "pdu":
            device["profile"] = "apc-no-energy"
    view = View(parse_config(raw, "test"))
    assert view.energy_meters == set()
    text = draw(view)
    assert "energy" not in text
    # Mixed: the column shows, and a PDU without a counter says so rather than showing a number.
    raw["devices"] = [d if d["id"] != "apc-a01a" else {**d, "profile": "apc-rpdu2"} for d in raw["devices"]]
    view = View(parse_config(raw, "test"))
    assert view.energy_meters == {"apc-a01a"}
    send(view, "apc-c01a", "pdu", {"power_w": 20000.0, "energy_kwh": 5.0})
    text = draw(view)
    assert "energy kWh" in text and line_of(text, "apc-c01a").rstrip(" │").endswith("n/a")


def test_the_live_screen_draws_a_snapshot_rendered_off_the_event_loop() -> None:
    view = busiest()
    frame = render_frame(view.snapshot(), WIDTH, HEIGHT)
    assert len(frame.lines) == HEIGHT
    console = Console(width=WIDTH, height=HEIGHT, record=True, force_terminal=True)
    console.print(frame)
    assert console.export_text().splitlines() == draw(view).splitlines()
    # The copy does not follow the view: the loop may change it while a worker thread renders the copy.
    copy = view.snapshot()
    send(view, "apc-c01a", "pdu", {"power_w": 1.0})
    alarm(view, "C02", "air-rack-later", "warning", "C02: a later alarm")
    view.event("later")
    assert copy.latest["apc-c01a"]["power_w"] == 20250 and "C02/air-rack-later" in view.alarms
    assert "C02/air-rack-later" not in copy.alarms
    assert "later" not in " ".join(copy.events)
