"""`dcim demo` (what `make demo` runs): a simulated hall, an embedded broker, the daemon, live on the terminal.

Everything runs in one process: the simulators serve the configuration's devices on their real protocols,
the daemon polls them like real hardware, publishes through the broker (an embedded amqtt when the
configuration names none), and the terminal shows what a subscriber of that broker receives: readings,
device status and alarms. A short scenario injects faults (a CDU pump failure, a tripped PDU feed, a
chiller trip) and clears them, so the alarms show too. Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt

from dcim.app.config import Config, ConfigError, load_config
from dcim.app.daemon import Daemon, stop_on_signals
from dcim.app.simulate import run_simulators, wait_listening
from dcim.core.logs import setup_logging
from dcim.core.samples import Batch, DeviceStatus
from dcim.simulators.plant import Plant

CLEAR = "\033[H\033[J"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def start_broker(port: int) -> Any:
    from amqtt.broker import Broker

    broker = Broker({
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "sys_interval": 0,
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    })
    await broker.start()
    return broker


class View:
    """What the terminal shows: the latest readings from the pipeline, status and alarms from the broker."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.latest: dict[str, dict[str, Any]] = {}
        self.status: dict[str, dict[str, Any]] = {}
        self.alarms: dict[str, dict[str, Any]] = {}
        self.messages = 0
        self.events: list[str] = []
        self.started = time.monotonic()

    # pipeline sink (readings as the daemon decoded them)
    def on_batch(self, batch: Batch) -> None:
        values = self.latest.setdefault(batch.device, {})
        for s in batch.samples:
            if not s.tags:
                values[s.point] = s.value if s.ok else None

    def on_status(self, status: DeviceStatus) -> None:
        pass

    def event(self, text: str) -> None:
        self.events = [*self.events[-5:], f"{time.monotonic() - self.started:6.0f}s  {text}"]

    def mqtt_message(self, topic: str, payload: bytes) -> None:
        self.messages += 1
        parts = topic.split("/")
        if len(parts) >= 4 and parts[2] == "status":
            self.status[parts[3]] = json.loads(payload) if payload else {}
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

    def render(self) -> str:
        def fmt(value: Any, unit: str = "", digits: int = 1) -> str:
            if value is None:
                return "--"
            if isinstance(value, bool):
                return "YES" if value else "no"
            if isinstance(value, float | int):
                return f"{value:.{digits}f}{unit}"
            return str(value)

        out = [f"dcim demo: site {self.config.site.id}   up {time.monotonic() - self.started:.0f}s   "
               f"{self.messages} MQTT messages received   (Ctrl-C to stop)", ""]
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
            v = self.latest.get(device.id, {})
            state = self.status.get(device.id, {})
            online = "online" if state.get("online", True) else f"OFFLINE ({state.get('error', '')})"
            if device.kind == "cdu":
                line = (f"supply {fmt(v.get('supply_temp_c'), ' C')}  return {fmt(v.get('return_temp_c'), ' C')}  "
                        f"flow {fmt(v.get('flow_lpm'), ' L/min', 0)}  pumps {fmt(v.get('pump1_speed_pct'), '%', 0)}/"
                        f"{fmt(v.get('pump2_speed_pct'), '%', 0)}  dP {fmt(v.get('diff_pressure_kpa'), ' kPa', 0)}  "
                        f"leak {fmt(v.get('leak'))}")
            elif device.kind == "pdu":
                line = f"power {fmt(_kw(v.get('power_w')), ' kW')}  energy {fmt(v.get('energy_kwh'), ' kWh', 0)}"
            else:
                line = (f"leaving {fmt(v.get('leaving_temp_c'), ' C')}  setpoint {fmt(v.get('setpoint_c'), ' C')}  "
                        f"load {fmt(v.get('cooling_kw'), ' kW', 0)}  COP {fmt(v.get('cop'), '', 2)}  "
                        f"{fmt(v.get('status'))}")
            out.append(f"{device.id:<10}{device.kind:<8}{online:<9} {line}")
        out.append("")
        held = sum(1 for a in self.alarms.values() if a.get("suppressed"))
        out.append(f"active alarms ({len(self.alarms)}, {held} suppressed):")
        # Suppressed alarms last, each with the alarm that suppresses it: they are not the fault to act on.
        for alarm in sorted(self.alarms.values(), key=lambda a: (bool(a.get("suppressed")),
                                                                 a.get("severity") != "critical", a.get("key", ""))):
            severity = "suppr." if alarm.get("suppressed") else alarm.get("severity", "?")
            why = f"  [{alarm['suppressed']}]" if alarm.get("suppressed") else ""
            out.append(f"  {severity:<9}{alarm.get('subject', ''):<10}{alarm.get('message', '')}{why}")
        if self.events:
            out += ["", "events:", *[f"  {e}" for e in self.events]]
        return "\n".join(out)


def _kw(watts: Any) -> Any:
    return watts / 1000 if isinstance(watts, int | float) else None


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
        steps += [(20, f"inject: pump failure on {cdu}", lambda p: p.inject(cdu, "pump_failure")),
                  (50, f"clear: pumps of {cdu} restored", lambda p: p.clear(cdu, "pump_failure"))]
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


async def watch_broker(config: Config, view: View) -> None:
    proto = aiomqtt.ProtocolVersion.V5 if config.mqtt.protocol == "5" else aiomqtt.ProtocolVersion.V311
    while True:
        try:
            async with aiomqtt.Client(config.mqtt.host or "", config.mqtt.port, protocol=proto,
                                      identifier=f"dcim-demo-view-{free_port()}") as client:
                await client.subscribe(f"{config.mqtt.prefix}/#", qos=1)
                async for message in client.messages:
                    view.mqtt_message(str(message.topic), bytes(message.payload))
        except aiomqtt.MqttError:
            await asyncio.sleep(1.0)


async def show(view: View, tty: bool) -> None:
    while True:
        await asyncio.sleep(2.0)
        text = view.render()
        print(CLEAR + text if tty else text + "\n", flush=True)


async def demo(config: Config, *, duration: float | None, faults: bool) -> None:
    broker = None
    if config.mqtt.host is None:
        port = free_port()
        broker = await start_broker(port)
        config = config.model_copy(update={"mqtt": config.mqtt.model_copy(
            update={"host": "127.0.0.1", "port": port, "protocol": "3.1.1"})})
        print(f"embedded MQTT broker (amqtt) on 127.0.0.1:{port}", flush=True)
    # An ephemeral port for the HTTP API: a daemon already running here must not keep the demo from starting.
    config = config.model_copy(update={"http": config.http.model_copy(update={"port": 0})})
    plant = Plant(config)
    view = View(config)
    daemon = Daemon(config)
    daemon.pipeline.add_sink(view)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    stop_on_signals(stop)
    try:
        async with asyncio.TaskGroup() as tg:
            listening = asyncio.Event()
            sims = tg.create_task(run_simulators(config, plant, ready=listening), name="simulators")
            await wait_listening(listening, sims)
            # --duration counts from a served hall: building the OPC UA servers' address space alone can take
            # longer than a short demo on a busy machine.
            if duration is not None:
                loop.call_later(duration, stop.set)
            helpers = [tg.create_task(watch_broker(config, view), name="demo-view"),
                       tg.create_task(show(view, sys.stdout.isatty()), name="demo-screen")]
            if faults:
                helpers.append(tg.create_task(play(scenario(config), plant, view), name="demo-scenario"))
            await daemon.run(stop)
            for task in (*helpers, sims):
                task.cancel()
    finally:
        if broker is not None:
            with contextlib.suppress(Exception):
                await broker.shutdown()
    print("\n" + view.render() + "\n\ndemo stopped cleanly", flush=True)


def run_demo(path: Path, *, duration: float | None = None, scenario: bool = True) -> int:
    try:
        config = load_config(path)
    except ConfigError as err:
        print(err.render(), file=sys.stderr)
        return 2
    setup_logging("warning", "console")
    asyncio.run(demo(config, duration=duration, faults=scenario))
    return 0
