"""The plant model behind every simulator: racks make heat, CDU loops carry it, chillers reject it.

    rack load (kW) --A/B feeds--> PDUs (phases, outlets)
        |
        '-- heat --> CDU secondary loop (TCS): flow from pump speed; return = supply + Q / (flow x rho x cp)
                        '-- facility loop --> chiller: leaving temp follows its setpoint, drifts up when the
                                               load exceeds capacity; COP falls with load and lift

Every simulator reads the plant through `values(device)` (canonical point name -> value) and `rows(device,
table)` (row index -> canonical values, for PDU tables), and writes back through `write(device, point, value)`.
So the simulators are thin protocol views of one physical state, and a fault injected here (a pump failure,
a leak, a tripped feed) shows in every protocol at once.

`advance(dt)` integrates the dynamics; with `frozen=True` nothing moves and there is no noise, so tests can
compare what the daemon stored with what the plant served.
"""

from __future__ import annotations

import math
import random
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dcim.core.samples import Value

if TYPE_CHECKING:
    from dcim.core.topology import Hall

WATER_CP = 4.18  # kJ/(kg.K)
WATER_RHO = 1.0  # kg/L

FAULTS = {
    "cdu": ("pump_failure", "leak", "stuck_sensor", "no_response"),
    "pdu": ("no_response", "feed_trip", "near_overload"),
    "chiller": ("trip", "lockout", "no_response", "bad_node", "restart"),
}


def _load_state(load: float, near: float, over: float) -> str:
    """A PDU's load state as the vendors report it (APC rPDU2 loadState, Raritan sensor state)."""
    if load <= 0:
        return "low_load"
    if load >= over:
        return "overload"
    return "near_overload" if load >= near else "normal"


@dataclass
class RackState:
    id: str
    cooling: str
    budget_kw: float
    cdu: str | None
    # Fraction of the budget the IT load draws; wanders slowly unless frozen.
    utilization: float = 0.7
    # Extra load on top of utilization (fault injection and tests push racks over budget with it).
    extra_kw: float = 0.0
    outlets: int = 24
    outlets_off: dict[str, set[int]] = field(default_factory=lambda: {"a": set(), "b": set()})
    pdus: dict[str, str] = field(default_factory=dict)  # feed -> pdu id
    breaker_a: dict[str, float] = field(default_factory=dict)  # feed -> A
    voltage_v: float = 230.0

    @property
    def nominal_kw(self) -> float:
        return self.budget_kw * self.utilization + self.extra_kw

    def outlet_share(self, feed: str) -> float:
        """Fraction of this feed's nominal load still switched on."""
        return 1.0 - len(self.outlets_off[feed]) / self.outlets


@dataclass
class PumpState:
    speed_pct: float = 55.0
    failed: bool = False


@dataclass
class CduState:
    id: str
    racks: list[str]
    chiller: str | None = None
    supply_setpoint_c: float = 32.0
    flow_setpoint_lpm: float = 0.0
    pumps: list[PumpState] = field(default_factory=lambda: [PumpState(), PumpState()])
    pump_max_lpm: float = 400.0  # per pump at 100 % speed
    supply_temp_c: float = 32.0
    return_temp_c: float = 42.0
    facility_supply_c: float = 24.0
    facility_return_c: float = 30.0
    valve_pct: float = 50.0
    leak_zones: list[bool] = field(default_factory=lambda: [False, False, False, False])
    reservoir_ok: bool = True
    liquid_fraction: float = 0.9  # share of a liquid-cooled rack's heat the loop carries
    # Flow mode: the pumps chase the flow setpoint; off, they hold their speed (the OCP RPU's auto-tune flag).
    auto_flow_control: bool = True
    pump_max_rpm: float = 3600.0


@dataclass
class ChillerState:
    id: str
    capacity_kw: float = 2000.0
    setpoint_c: float = 18.0
    leaving_c: float = 18.0
    running: bool = True
    tripped: bool = False
    locked_out: bool = False
    demand_limit_pct: float = 100.0
    condenser_entering_c: float = 28.0


class Plant:
    def __init__(self, config: Hall, *, seed: int = 1, frozen: bool = False) -> None:
        self.rng = random.Random(seed)
        self.frozen = frozen
        self.time_s = 0.0
        self.faults: dict[str, dict[str, dict[str, Any]]] = {}
        self.racks: dict[str, RackState] = {}
        self.cdus: dict[str, CduState] = {}
        self.chillers: dict[str, ChillerState] = {}
        self.kinds: dict[str, str] = {d.id: d.kind for d in config.devices}
        # Bound sockets to serve devices on instead of binding their host:port (a UDP port a test holds until
        # the simulator takes it over, so it is never free for someone else in between). Taken on first use.
        self.sockets: dict[str, socket.socket] = {}
        # Each PDU's energy counter (kWh): it integrates the feed's power, so it only ever grows and holds
        # still while the feed is tripped, as a real meter does.
        self.energy_kwh: dict[str, float] = {}
        for _, _, rack in config.racks():
            state = RackState(rack.id, rack.cooling, rack.power_budget_kw, rack.cdu,
                              utilization=0.6 + 0.25 * self.rng.random() if not frozen else 0.75)
            for side in ("a", "b"):
                feed = getattr(rack.feeds, side)
                if feed is not None:
                    state.pdus[side] = feed.pdu
                    state.breaker_a[side] = feed.breaker_a
                    state.voltage_v = feed.voltage_v
            self.racks[rack.id] = state
        chillers = [d.id for d in config.devices if d.kind == "chiller"]
        for device in config.devices:
            if device.kind == "cdu":
                served = [r.id for r in self.racks.values() if r.cdu == device.id]
                cdu = CduState(device.id, served, chiller=chillers[0] if chillers else None)
                cdu.flow_setpoint_lpm = max(60.0, 1.5 * sum(self.racks[r].budget_kw for r in served))
                cdu.pump_max_lpm = cdu.flow_setpoint_lpm / 1.1  # two pumps at ~55 % meet the setpoint
                self.cdus[device.id] = cdu
            elif device.kind == "chiller":
                # The first chiller leads; the others stand by, stopped, until a changeover starts them.
                self.chillers[device.id] = ChillerState(device.id, running=not chillers or device.id == chillers[0])
        self._settle()

    # ---- faults -------------------------------------------------------------------------------------

    def inject(self, device: str, fault: str, **params: Any) -> None:
        kind = self.kinds.get(device)
        if kind is None:
            raise KeyError(f"no device {device!r}")
        if fault not in FAULTS[kind]:
            raise ValueError(f"{kind} faults are {', '.join(FAULTS[kind])}, not {fault!r}")
        self.faults.setdefault(device, {})[fault] = params
        if fault == "stuck_sensor":
            point = params.get("point", "supply_temp_c")
            params.setdefault("value", self.values(device).get(point))
            params["point"] = point

    def clear(self, device: str, fault: str | None = None) -> None:
        if fault is None:
            self.faults.pop(device, None)
        else:
            self.faults.get(device, {}).pop(fault, None)

    def fault(self, device: str, fault: str) -> dict[str, Any] | None:
        return self.faults.get(device, {}).get(fault)

    def answering(self, device: str) -> bool:
        return self.fault(device, "no_response") is None

    # ---- dynamics ------------------------------------------------------------------------------------

    def rack_power_kw(self, rack: RackState) -> float:
        """Electrical power actually drawn, after outlets switched off and feeds lost."""
        live = [f for f in rack.pdus if not self._feed_tripped(rack, f)]
        if not rack.pdus:
            return rack.nominal_kw
        if not live:
            return 0.0
        # Dual-corded servers: each PSU pair shares the load; an outlet off on one feed shifts its share
        # to the other, so only outlets off on every live feed remove load.
        share = sum(rack.outlet_share(f) for f in live) / len(live)
        if len(live) < len(rack.pdus):
            share = rack.outlet_share(live[0])
        return rack.nominal_kw * share

    def feed_power_kw(self, rack: RackState, feed: str) -> float:
        if feed not in rack.pdus or self._feed_tripped(rack, feed):
            return 0.0
        live = [f for f in rack.pdus if not self._feed_tripped(rack, f)]
        total = self.rack_power_kw(rack)
        if len(live) == 1:
            return total
        shares = {f: rack.outlet_share(f) for f in live}
        denominator = sum(shares.values()) or 1.0
        return total * shares[feed] / denominator

    def _feed_tripped(self, rack: RackState, feed: str) -> bool:
        pdu = rack.pdus.get(feed)
        return pdu is not None and self.fault(pdu, "feed_trip") is not None

    def cdu_heat_kw(self, cdu: CduState) -> float:
        return sum(self.rack_power_kw(self.racks[r]) * cdu.liquid_fraction for r in cdu.racks)

    def cdu_flow_lpm(self, cdu: CduState) -> float:
        if self.fault(cdu.id, "pump_failure") is not None:
            failed = self.fault(cdu.id, "pump_failure") or {}
            which = failed.get("pump")
            for i, pump in enumerate(cdu.pumps, start=1):
                pump.failed = which is None or int(which) == i
        else:
            for pump in cdu.pumps:
                pump.failed = False
        flow = sum(p.speed_pct / 100 * cdu.pump_max_lpm for p in cdu.pumps if not p.failed)
        if self.fault(cdu.id, "leak") is not None:
            flow *= 0.85
        return flow

    def advance(self, dt: float) -> None:
        if self.frozen or dt <= 0:
            return
        self.time_s += dt
        for rack in self.racks.values():
            for side, pdu in rack.pdus.items():
                self.energy_kwh[pdu] = self._energy_kwh(rack, side) + self.feed_power_kw(rack, side) * dt / 3600
            drift = self.rng.gauss(0, 0.004) * math.sqrt(dt)
            rack.utilization = min(0.95, max(0.4, rack.utilization + drift))
        for cdu in self.cdus.values():
            self._step_cdu(cdu, dt)
        for chiller in self.chillers.values():
            self._step_chiller(chiller, dt)

    def _settle(self) -> None:
        for cdu in self.cdus.values():
            for _ in range(50):
                self._step_cdu(cdu, 10.0)
        for chiller in self.chillers.values():
            self._step_chiller(chiller, 1000.0)

    def _step_cdu(self, cdu: CduState, dt: float) -> None:
        running = [p for p in cdu.pumps if not p.failed]
        flow = self.cdu_flow_lpm(cdu)
        # Pumps chase the flow setpoint (a proportional controller, as real CDUs do in flow mode).
        if running and cdu.auto_flow_control:
            error = (cdu.flow_setpoint_lpm - flow) / max(cdu.flow_setpoint_lpm, 1.0)
            for pump in running:
                pump.speed_pct = min(100.0, max(20.0, pump.speed_pct + 40.0 * error * min(dt, 1.0)))
        for pump in cdu.pumps:
            if pump.failed:
                pump.speed_pct = 0.0
        flow = self.cdu_flow_lpm(cdu)
        heat = self.cdu_heat_kw(cdu)
        alpha = 1 - math.exp(-dt / 20.0)
        chiller = self.chillers.get(cdu.chiller) if cdu.chiller else None
        cdu.facility_supply_c = chiller.leaving_c if chiller else 24.0
        # The facility valve opens with load; the secondary supply can't go below facility + approach.
        cdu.valve_pct += alpha * (min(100.0, 15 + 85 * heat / max(1.0, 1.5 * len(cdu.racks) * 150)) - cdu.valve_pct)
        supply_target = max(cdu.supply_setpoint_c, cdu.facility_supply_c + 3.0)
        cdu.supply_temp_c += alpha * (supply_target - cdu.supply_temp_c)
        delta = heat / (flow / 60 * WATER_RHO * WATER_CP) if flow > 1 else 40.0
        cdu.return_temp_c += alpha * (cdu.supply_temp_c + min(delta, 40.0) - cdu.return_temp_c)
        design_kw = max(1.0, 0.6 * 1.5 * len(cdu.racks) * 150)
        cdu.facility_return_c = cdu.facility_supply_c + min(15.0, heat / design_kw * 10)
        self._apply_leak(cdu)

    def _apply_leak(self, cdu: CduState) -> None:
        # Applied when served too, so a leak shows at once even in a frozen plant.
        leak = self.fault(cdu.id, "leak")
        # `zone: 2` wets one zone (zone 1 by default); `zones: [1, 2]` several (a spreading leak).
        wet = {int(z) for z in leak.get("zones", [leak.get("zone", 1)])} if leak is not None else set()
        cdu.leak_zones = [i in wet for i in range(1, len(cdu.leak_zones) + 1)]
        cdu.reservoir_ok = leak is None

    def _step_chiller(self, ch: ChillerState, dt: float) -> None:
        ch.tripped = self.fault(ch.id, "trip") is not None
        ch.locked_out = self.fault(ch.id, "lockout") is not None
        if ch.tripped or ch.locked_out:
            if ch.running:
                ch.running = False
                self._changeover(ch)
        load = self.chiller_load_kw(ch)
        capacity = ch.capacity_kw * ch.demand_limit_pct / 100 if ch.running else 0.0
        overload = max(0.0, load - capacity)
        target = ch.setpoint_c + (overload / max(ch.capacity_kw, 1.0)) * 20.0
        ch.leaving_c += (1 - math.exp(-dt / 60.0)) * (target - ch.leaving_c)

    def _changeover(self, lead: ChillerState) -> None:
        """A lead that stops hands its loops to a healthy standby, which starts (as a plant controller does).
        The loops stay there when the lead comes back: switching back is an operator's decision."""
        standby = next((c for c in self.chillers.values()
                        if c is not lead and not (c.tripped or c.locked_out)), None)
        if standby is None:
            return
        for cdu in self.cdus.values():
            if cdu.chiller == lead.id:
                cdu.chiller = standby.id
        standby.running = True

    def chiller_load_kw(self, ch: ChillerState) -> float:
        return sum(self.cdu_heat_kw(c) for c in self.cdus.values() if c.chiller == ch.id)

    # ---- what the simulators serve ---------------------------------------------------------------------

    def _noise(self, value: float, sigma: float) -> float:
        # Sensors read zero as zero: noise never makes a stopped flow negative.
        if self.frozen or value == 0:
            return value
        return max(0.0, value + self.rng.gauss(0.0, sigma)) if value > 0 else value + self.rng.gauss(0.0, sigma)

    def values(self, device: str) -> dict[str, Value]:
        kind = self.kinds[device]
        if kind == "cdu":
            out = self._cdu_values(self.cdus[device])
        elif kind == "chiller":
            out = self._chiller_values(self.chillers[device])
        else:
            out = self._pdu_values(device)
        stuck = self.fault(device, "stuck_sensor")
        if stuck is not None and stuck.get("point") in out and stuck.get("value") is not None:
            out[stuck["point"]] = stuck["value"]
        return out

    def _cdu_values(self, cdu: CduState) -> dict[str, Value]:
        self._apply_leak(cdu)
        flow = self.cdu_flow_lpm(cdu)
        heat_removed = flow / 60 * WATER_RHO * WATER_CP * (cdu.return_temp_c - cdu.supply_temp_c)
        mean_speed = sum(p.speed_pct for p in cdu.pumps) / len(cdu.pumps)
        supply_p = 150.0 + 250.0 * (mean_speed / 100) ** 2 * (0.6 if self.fault(cdu.id, "leak") else 1.0)
        return_p = 120.0 if not self.fault(cdu.id, "leak") else 60.0
        out: dict[str, Value] = {
            "facility_supply_temp_c": round(self._noise(cdu.facility_supply_c, 0.05), 2),
            "facility_return_temp_c": round(self._noise(cdu.facility_return_c, 0.05), 2),
            "supply_temp_c": round(self._noise(cdu.supply_temp_c, 0.05), 2),
            "return_temp_c": round(self._noise(cdu.return_temp_c, 0.05), 2),
            "flow_lpm": round(self._noise(flow, 0.5), 1),
            "supply_pressure_kpa": round(self._noise(supply_p, 0.5), 1),
            "return_pressure_kpa": round(self._noise(return_p, 0.5), 1),
            "diff_pressure_kpa": round(supply_p - return_p, 1),
            "valve_pct": round(cdu.valve_pct, 1),
            "heat_removed_kw": round(heat_removed, 1),
            "reservoir_level": "ok" if cdu.reservoir_ok else "low",
            "leak": any(cdu.leak_zones),
            "supply_temp_setpoint_c": cdu.supply_setpoint_c,
            "flow_setpoint_lpm": cdu.flow_setpoint_lpm,
            "pump_fault": any(p.failed for p in cdu.pumps),
            "power_w": round(sum(30 * (p.speed_pct / 100) ** 3 for p in cdu.pumps) * 100, 0),
            "pump_speed_pct": round(mean_speed, 1),
            "reservoir_alarm": not cdu.reservoir_ok,
            "auto_flow_control": cdu.auto_flow_control,
        }
        for i, pump in enumerate(cdu.pumps, start=1):
            out[f"pump{i}_speed_pct"] = round(pump.speed_pct, 1)
            out[f"pump{i}_rpm"] = round(pump.speed_pct / 100 * cdu.pump_max_rpm)
            out[f"pump{i}_running"] = not pump.failed and pump.speed_pct > 0
        for i, wet in enumerate(cdu.leak_zones, start=1):
            out[f"leak_zone{i}"] = wet
        return out

    def _chiller_values(self, ch: ChillerState) -> dict[str, Value]:
        # Faults show at once, also in a frozen plant (advance() is where they would otherwise land).
        if (self.fault(ch.id, "trip") is not None or self.fault(ch.id, "lockout") is not None) and ch.running:
            # The plant controller hands the loops to a standby at once (advance() would do the same; it
            # must happen here too, or a trip served before the next step would never change over).
            ch.running = False
            ch.tripped = self.fault(ch.id, "trip") is not None
            ch.locked_out = self.fault(ch.id, "lockout") is not None
            self._changeover(ch)
        ch.tripped = ch.tripped or self.fault(ch.id, "trip") is not None
        ch.locked_out = ch.locked_out or self.fault(ch.id, "lockout") is not None
        load = self.chiller_load_kw(ch) if ch.running else 0.0
        flow_kg_s = max(1.0, ch.capacity_kw / (WATER_CP * 6.0))
        entering = ch.leaving_c + load / (flow_kg_s * WATER_CP)
        lift = max(5.0, ch.condenser_entering_c + 5.0 - ch.leaving_c)
        fraction = load / ch.capacity_kw if ch.capacity_kw else 0.0
        cop = max(1.5, 7.2 - 0.08 * (lift - 10) - 2.5 * max(0.0, fraction - 0.8)) if ch.running else 0.0
        status = "locked_out" if ch.locked_out else "tripped" if ch.tripped else "running" if ch.running else "stopped"
        return {
            "leaving_temp_c": round(self._noise(ch.leaving_c, 0.03), 2),
            "entering_temp_c": round(self._noise(entering, 0.03), 2),
            "setpoint_c": ch.setpoint_c,
            "condenser_entering_temp_c": round(ch.condenser_entering_c, 2),
            "condenser_leaving_temp_c": round(ch.condenser_entering_c + 5.0, 2),
            "running": ch.running,
            "status": status,
            "alarm": ch.tripped or ch.locked_out,
            "demand_limit_pct": ch.demand_limit_pct,
            "cooling_kw": round(load, 1),
            "power_kw": round(load / cop, 1) if cop else 0.0,
            "cop": round(cop, 2),
        }

    def _pdu_values(self, device: str) -> dict[str, Value]:
        for rack in self.racks.values():
            for feed, pdu in rack.pdus.items():
                if pdu == device:
                    return self._feed_values(rack, feed)
        return {"power_w": 0.0}

    def pdu_feed(self, device: str) -> tuple[RackState, str] | None:
        for rack in self.racks.values():
            for feed, pdu in rack.pdus.items():
                if pdu == device:
                    return rack, feed
        return None

    def _feed_values(self, rack: RackState, feed: str) -> dict[str, Value]:
        kw = self.feed_power_kw(rack, feed)
        near = self.fault(rack.pdus[feed], "near_overload")
        if near is not None:
            kw = rack.breaker_a.get(feed, 32.0) * rack.voltage_v * 3 * float(near.get("fraction", 0.85)) / 1000
        watts = self._noise(kw * 1000, 5.0) if kw else 0.0
        near_w, over_w = self._pdu_thresholds_w(rack, feed)
        breaker = rack.breaker_a.get(feed, 32.0)
        return {
            "power_w": round(watts, 0),
            "apparent_power_va": round(watts / 0.97, 0),
            "power_factor": 0.97 if kw else 0.0,
            "energy_kwh": round(self._energy_kwh(rack, feed), 1),
            "breaker_a": breaker,
            "voltage_ln_v": rack.voltage_v,
            "tripped": self._feed_tripped(rack, feed),
            "load_state": _load_state(watts, near_w, over_w),
            "near_overload_w": near_w,
            "overload_w": over_w,
            # Per-phase current thresholds: 80 % and 90 % of the breaker (continuous-load practice).
            "near_overload_current_a": round(0.8 * breaker),
            "overload_current_a": round(0.9 * breaker),
        }

    def _energy_kwh(self, rack: RackState, feed: str) -> float:
        pdu = rack.pdus[feed]
        if pdu not in self.energy_kwh:
            # A meter that has run about six weeks at the feed's first load.
            self.energy_kwh[pdu] = self.feed_power_kw(rack, feed) * 1000
        return self.energy_kwh[pdu]

    # Per-phase share of a feed's load: a small, stable imbalance, as real racks have.
    PHASE_WEIGHTS = (1.04, 0.98, 0.98)

    def _neutral_a(self, rack: RackState, feed_w: float) -> float:
        amps = [feed_w / 3 * w / rack.voltage_v for w in self.PHASE_WEIGHTS]
        # Lines 120 degrees apart: I_N = |Ia + Ib a^2 + Ic a| with a = e^(j120).
        real = amps[0] - 0.5 * (amps[1] + amps[2])
        imag = math.sqrt(3) / 2 * (amps[2] - amps[1])
        return round(math.hypot(real, imag), 1)

    @staticmethod
    def _pdu_thresholds_w(rack: RackState, feed: str) -> tuple[float, float]:
        """Device power thresholds a PDU ships with: 80 % / 90 % of its three-phase breaker capacity,
        in whole 100 W steps (APC keeps them in tenths of kW)."""
        capacity_w = rack.breaker_a.get(feed, 32.0) * rack.voltage_v * 3
        return round(0.8 * capacity_w / 100) * 100.0, round(0.9 * capacity_w / 100) * 100.0

    def rows(self, device: str, table: str) -> dict[int, dict[str, Value]]:
        """PDU table rows: `phase` (1..3), `pole` (4: a wye inlet's neutral), `outlet` (1..N), `bank` (1..2),
        `probe` (1)."""
        located = self.pdu_feed(device)
        if located is None:
            return {}
        rack, feed = located
        feed_w = float(self._feed_values(rack, feed)["power_w"])
        if table == "phase":
            weights = self.PHASE_WEIGHTS
            breaker = rack.breaker_a.get(feed, 32.0)
            return {
                i: {
                    "power_w": round(feed_w / 3 * w, 0),
                    "current_a": round(feed_w / 3 * w / rack.voltage_v, 1),
                    "voltage_ln_v": rack.voltage_v,
                    "voltage_ll_v": round(rack.voltage_v * math.sqrt(3)),
                    "load_state": _load_state(feed_w / 3 * w / rack.voltage_v, 0.8 * breaker, 0.9 * breaker),
                    "near_overload_current_a": round(0.8 * breaker),
                    "overload_current_a": round(0.9 * breaker),
                }
                for i, w in enumerate(weights, start=1)
            }
        if table == "pole":
            # A wye inlet's neutral carries the phasor sum of the line currents (unity power factor).
            return {4: {"neutral_current_a": self._neutral_a(rack, feed_w)}}
        if table == "bank":
            # Two banks (breakers), each feeding half of the outlets.
            outlets = self.rows(device, "outlet")
            half = rack.outlets // 2
            return {
                bank: {"current_a": round(sum(float(row["current_a"]) for n, row in outlets.items()
                                              if (n <= half) == (bank == 1)), 1)}
                for bank in (1, 2)
            }
        if table == "probe":
            # One temperature/humidity probe at the rack's air inlet.
            inlet_c = 22.0 + (3.0 if rack.cooling == "air" else 1.0) * rack.utilization
            return {1: {"temp_c": round(self._noise(inlet_c, 0.05), 1), "humidity_pct": 45.0}}
        if table == "outlet":
            off = rack.outlets_off[feed]
            live = rack.outlets - len(off)
            per = feed_w / live if live else 0.0
            out: dict[int, dict[str, Value]] = {
                n: {
                    "state": "off" if n in off or feed_w == 0 else "on",
                    "power_w": 0.0 if n in off else round(per, 0),
                    "current_a": 0.0 if n in off else round(per / rack.voltage_v, 2),
                    "energy_kwh": round(per / 1000 * (100 + self.time_s / 3600), 1),
                }
                for n in range(1, rack.outlets + 1)
            }
            for n, row in out.items():
                # An outlet that draws nothing has no power factor to measure (no key: unavailable).
                if n not in off and per > 0:
                    row["power_factor"] = 0.97
            return out
        return {}

    def write(self, device: str, point: str, value: Value) -> None:
        """A write from a protocol server: setpoints and commands change the plant."""
        kind = self.kinds[device]
        if kind == "cdu":
            cdu = self.cdus[device]
            if point == "supply_temp_setpoint_c":
                cdu.supply_setpoint_c = float(value)
            elif point == "flow_setpoint_lpm":
                cdu.flow_setpoint_lpm = float(value)
            elif point == "auto_flow_control":
                cdu.auto_flow_control = bool(value)
            else:
                raise KeyError(point)
        elif kind == "chiller":
            ch = self.chillers[device]
            if point == "setpoint_c":
                ch.setpoint_c = float(value)
            elif point == "demand_limit_pct":
                ch.demand_limit_pct = float(value)
            elif point in ("running", "start_stop"):
                ch.running = bool(value) and not (ch.tripped or ch.locked_out)
            else:
                raise KeyError(point)
        else:
            raise KeyError(point)

    def switch_outlet(self, device: str, outlet: int, on: bool) -> None:
        located = self.pdu_feed(device)
        if located is None:
            raise KeyError(device)
        rack, feed = located
        if not 1 <= outlet <= rack.outlets:
            raise KeyError(f"outlet {outlet}")
        (rack.outlets_off[feed].discard if on else rack.outlets_off[feed].add)(outlet)
