"""The `dcim` command line.

    dcim run -c FILE          the daemon
    dcim check -c FILE        validate a configuration: every error with its path, non-zero exit
    dcim schema               the JSON Schema of the configuration
    dcim simulate -c FILE     serve every `simulate: true` device from the simulators
    dcim read -c FILE DEVICE  read a device once and print its points (commissioning)
    dcim write -c FILE DEVICE POINT VALUE   write one point: guarded, verified, audited (dcim/app/writes_cli.py)
    dcim audit -c FILE [--verify]            the write audit trail and its hash chain
    dcim ingest -c FILE       the MQTT -> InfluxDB ingest alone
    dcim demo                 simulators + embedded broker + daemon, live on the terminal
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from dcim.app.config import Config, ConfigError, json_schema, load_config
from dcim.core.logs import setup_logging
from dcim.core.samples import Quality, Value
from dcim.drivers.registry import PROTOCOLS

# Packages that add subcommands of their own: each has `register(subparsers)`. Protocols name theirs in the
# protocol registry (`ProtocolSpec.commands`).
COMMAND_MODULES = ("dcim.app.alarms_cli", "dcim.app.writes_cli")


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as err:
        print(err.render(), file=sys.stderr)
        raise SystemExit(2) from None


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _run_async(main: Any) -> int:
    """Run a daemon-like coroutine; a task that fails is reported in one line, not an exception group."""
    try:
        asyncio.run(main)
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # the last stop before the user: say what failed, exit 1
        from dcim.app.instance import StartupError

        for leaf in _leaves(error):
            if isinstance(leaf, StartupError):
                print(f"dcim: cannot start: {leaf}", file=sys.stderr)
            else:
                print(f"dcim: stopped: {type(leaf).__name__}: {leaf}", file=sys.stderr)
        return 1
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(err.render(), file=sys.stderr)
        return 1
    racks = list(config.racks())
    cooling = Counter(rack.cooling for _, _, rack in racks)
    kinds = Counter(f"{d.kind}/{d.protocol}" for d in config.devices)
    print(f"{args.config}: OK")
    print(f"  site {config.site.id}: {len(config.rooms)} room(s), {len(racks)} rack(s) "
          f"({', '.join(f'{n} {c}' for c, n in sorted(cooling.items())) or 'none'})")
    print(f"  devices: {len(config.devices)} ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items())) or 'none'}), "
          f"{sum(d.simulate for d in config.devices)} simulated")
    print(f"  mqtt: {config.mqtt.host or '(none: embedded broker in the demo only)'}:{config.mqtt.port} "
          f"prefix {config.mqtt.prefix}")
    influx = config.influxdb
    print(f"  influxdb: {f'{influx.url} ({influx.api} API)' if influx else '(none)'}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0


def _claim(config: Config, *, poll: bool) -> Any:
    """The state_dir lock and the HTTP listener, taken before the daemon and the protocol libraries are
    imported (seconds on a loaded machine): a start-up error is one line and exit 1 at once. None when
    refused (the line is printed)."""
    from dcim.app.instance import Claim, StartupError

    try:
        return Claim.take(config, poll=poll)
    except StartupError as err:
        print(f"dcim: cannot start: {err}", file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    setup_logging(config.logging.level, config.logging.format)
    claim = _claim(config, poll=True)
    if claim is None:
        return 1
    from dcim.app.daemon import run_daemon

    return _run_async(run_daemon(config, config_path=args.config, claim=claim))


def cmd_ingest(args: argparse.Namespace) -> int:
    config = _load(args.config)
    setup_logging(config.logging.level, config.logging.format)
    if config.influxdb is None or config.mqtt.host is None:
        print(f"{args.config}: `dcim ingest` needs both mqtt.host and influxdb", file=sys.stderr)
        return 2
    claim = _claim(config, poll=False)
    if claim is None:
        return 1
    from dcim.app.daemon import run_daemon

    return _run_async(run_daemon(config, ingest=True, poll=False, config_path=args.config, claim=claim))


def cmd_simulate(args: argparse.Namespace) -> int:
    from dcim.app.simulate import run_simulators
    from dcim.simulators.plant import Plant

    config = _load(args.config)
    setup_logging(config.logging.level, config.logging.format)

    async def main() -> None:
        plant = Plant(config, seed=args.seed, frozen=args.frozen)
        await run_simulators(config, plant, control_port=args.control_port)

    return _run_async(main())


def _device_driver(config: Config, device_id: str) -> Any:
    from dcim.app.poller import make_driver
    from dcim.drivers.base import DriverContext
    from dcim.drivers.profiles import load_profile

    try:
        device = config.device(device_id)
    except KeyError:
        known = ", ".join(d.id for d in config.devices)
        print(f"no device {device_id!r} in the configuration (devices: {known})", file=sys.stderr)
        raise SystemExit(2) from None
    profile = load_profile(device.profile, config.extra_profile_dirs())
    return make_driver(device, profile, DriverContext())


def _format_value(value: Value | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def cmd_read(args: argparse.Namespace) -> int:
    from dcim.drivers.errors import DriverError

    config = _load(args.config)
    setup_logging("warning", "console")
    driver = _device_driver(config, args.device)
    units = {p.name: p.unit for p in driver.profile.points}

    async def main() -> int:
        try:
            async with asyncio.timeout(args.timeout):
                await driver.connect()
                samples = await driver.read()
        except (DriverError, TimeoutError) as err:
            print(f"{args.device}: cannot read: {err or 'no answer in time'}", file=sys.stderr)
            return 1
        finally:
            await driver.close()
        if args.json:
            print(json.dumps([{"point": s.point, "value": s.value, "unit": units.get(s.point, ""),
                               "quality": s.quality.value, "reason": s.reason or None,
                               "measurement": s.measurement, "tags": dict(s.tags)} for s in samples], indent=1))
            return 0
        print(f"{args.device} ({driver.profile.name}, {driver.profile.vendor} {driver.profile.model})".rstrip())
        for s in samples:
            where = ",".join(f"{k}={v}" for k, v in s.tags)
            name = f"{s.point}[{where}]" if where else s.point
            quality = s.quality.value if s.quality is Quality.GOOD else f"{s.quality.value}: {s.reason}"
            print(f"  {name:<36} {_format_value(s.value):>14} {units.get(s.point, ''):<7} {quality}")
        return 0

    return asyncio.run(main())


def cmd_demo(args: argparse.Namespace) -> int:
    from dcim.app.demo import run_demo

    return run_demo(Path(args.config), duration=args.duration, scenario=not args.no_faults)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcim", description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-c", "--config", required=True, help="configuration file (YAML)")
        return p

    with_config(sub.add_parser("run", help="run the daemon")).set_defaults(func=cmd_run)
    with_config(sub.add_parser("check", help="validate a configuration")).set_defaults(func=cmd_check)
    sub.add_parser("schema", help="print the configuration's JSON Schema").set_defaults(func=cmd_schema)
    sim = with_config(sub.add_parser("simulate", help="serve the configuration's simulated devices"))
    sim.add_argument("--control-port", type=int, default=None, help="HTTP endpoint for fault injection")
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--frozen", action="store_true", help="no dynamics and no noise (for tests)")
    sim.set_defaults(func=cmd_simulate)
    read = with_config(sub.add_parser("read", help="read a device once and print its points"))
    read.add_argument("device")
    read.add_argument("--json", action="store_true")
    read.add_argument("--timeout", type=float, default=15.0)
    read.set_defaults(func=cmd_read)
    with_config(sub.add_parser("ingest", help="run only the MQTT -> InfluxDB ingest")).set_defaults(func=cmd_ingest)
    demo = sub.add_parser("demo", help="simulated hall, embedded broker and the daemon, live")
    demo.add_argument("-c", "--config", default=str(Path("examples") / "hall.yaml"))
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.add_argument("--no-faults", action="store_true", help="do not inject the demo's faults")
    demo.set_defaults(func=cmd_demo)
    for name in (*COMMAND_MODULES, *(spec.commands for spec in PROTOCOLS if spec.commands)):
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
