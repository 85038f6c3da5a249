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
    dcim share NAME [DIR]     the shipped examples, Grafana dashboards and systemd units: list, or copy to DIR
    dcim completion SHELL     a bash, zsh or tcsh completion script (generated from this parser by shtab)
    dcim --version
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.machinery
import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import dcim
from dcim import __version__
from dcim.app.config import Config, ConfigError, json_schema, load_config
from dcim.core.logs import setup_logging
from dcim.core.resources import SHARED, shared, shared_files
from dcim.core.samples import Quality, Value
from dcim.drivers.registry import PROTOCOLS

# Packages that add subcommands of their own: each has `register(subparsers)`. Protocols name theirs in the
# protocol registry (`ProtocolSpec.commands`).
COMMAND_MODULES = ("dcim.app.alarms_cli", "dcim.app.writes_cli", "dcim.app.cluster.cli")


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
    from dcim.core.collector import paused

    # Out of the collector's walk until the daemon settles it, with what it builds (dcim.core.collector).
    with paused(freeze=True):
        config = _load(args.config)
    setup_logging(config.logging.level, config.logging.format)
    claim = _claim(config, poll=True)
    if claim is None:
        return 1
    from dcim.app.daemon import run_daemon

    return _run_async(run_daemon(config, config_path=args.config, claim=claim))


def cmd_ingest(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if args.worker is not None:
        from dcim.app.ingest_workers import worker_state_dir

        # One of `dcim run`'s workers: a state directory of its own (outbox, lock, client id), no HTTP API,
        # and JSON lines, which the daemon passes on to its own log.
        config = config.model_copy(update={
            "state_dir": str(worker_state_dir(config.state_dir, args.worker)),
            "http": config.http.model_copy(update={"enabled": False}),
            "logging": config.logging.model_copy(update={"format": "json"}),
        })
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

    # No -c: the example hall shipped in the package, so the demo runs from a wheel with no checkout around.
    path = Path(args.config) if args.config else shared("examples") / "hall.yaml"
    return run_demo(path, duration=args.duration, scenario=not args.no_faults)


def cmd_share(args: argparse.Namespace) -> int:
    """List a shipped tree, or copy it into a directory; a file that exists with other content is kept
    unless --force (an operator's edited unit or dashboard is not overwritten by accident)."""
    if args.name is None:
        for name in SHARED:
            print(f"{name:<9} {shared(name)}")
        return 0
    root = shared(args.name)
    files = shared_files(args.name)
    if args.dir is None:
        print(f"{args.name}: {root}")
        for relative in files:
            print(f"  {relative}")
        return 0
    target = Path(args.dir)
    clashes = [r for r in files if (target / r).is_file() and (target / r).read_bytes() != (root / r).read_bytes()]
    if clashes and not args.force:
        for relative in clashes:
            print(f"{target / relative}: exists and differs (--force to overwrite)", file=sys.stderr)
        return 1
    for relative in files:
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        data = (root / relative).read_bytes()
        if (target / relative).is_file() and (target / relative).read_bytes() == data:
            continue
        (target / relative).write_bytes(data)
        print(target / relative)
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    parser = build_parser()
    # Complete a file after every --config and a directory where one is asked for, in every subcommand,
    # including those that other modules register.
    for sub in [parser, *_subparsers(parser)]:
        for action in sub._actions:
            if "--config" in action.option_strings:
                action.complete = shtab.FILE  # type: ignore[attr-defined]
            elif action.dest == "dir":
                action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
    print(shtab.complete(parser, shell=args.shell))
    return 0


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += [child, *_subparsers(child)]
    return found


DESCRIPTION = "dcim: telemetry and control for data-centre power and cooling (PDUs, CDUs, chillers)."


class _Help(argparse.RawDescriptionHelpFormatter):
    """The examples keep their lines; subcommand names up to `opcua-cert` keep their help on the same line."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        # argparse measures the subcommand names without their extra indent, then wraps the longest ones.
        if isinstance(action, argparse._SubParsersAction):
            longest = max((len(name) for name in action.choices), default=0)
            self._action_max_length = max(self._action_max_length, longest + self._current_indent + 4)


EPILOG = """examples:
  dcim demo                                 the packaged example hall, simulated, live on the terminal
  dcim share examples ./dcim                copy the example configuration(s) out of the package
  dcim check -c /etc/dcim/dcim.yaml         validate a configuration (every error with its path)
  dcim read -c /etc/dcim/dcim.yaml cdu-1    read one device once (commissioning)
  dcim run -c /etc/dcim/dcim.yaml           the daemon (units: dcim share systemd DIR)
  dcim share grafana ./grafana              the dashboards and Grafana provisioning
  dcim completion bash > /etc/bash_completion.d/dcim

`dcim COMMAND --help` describes each command."""

# One example per subcommand, shown at the end of `dcim COMMAND --help` (unless its module gives an epilog).
EXAMPLES = {
    "run": "dcim run -c /etc/dcim/dcim.yaml",
    "check": "dcim check -c /etc/dcim/dcim.yaml",
    "schema": "dcim schema > dcim.schema.json",
    "simulate": "dcim simulate -c lab.yaml --control-port 8089",
    "read": "dcim read -c /etc/dcim/dcim.yaml cdu-1 --json",
    "ingest": "dcim ingest -c /etc/dcim/dcim.yaml",
    "demo": "dcim demo --duration 60",
    "share": "dcim share systemd ./units",
    "completion": "dcim completion zsh > ~/.zfunc/_dcim",
    "alarms": "dcim alarms -c /etc/dcim/dcim.yaml ack KEY --user alice",
    "write": "dcim write -c /etc/dcim/dcim.yaml cdu-1 supply_temp_setpoint_c 30 --dry-run",
    "audit": "dcim audit -c /etc/dcim/dcim.yaml --verify",
    "opcua-cert": "dcim opcua-cert --out-dir /etc/dcim/opcua",
}


def _describe(sub: Any) -> None:
    """Each subcommand's --help starts with its one-line summary and ends with an example."""
    for choice in sub._choices_actions:
        child = sub.choices[choice.dest]
        child.description = child.description or choice.help
        if choice.dest in EXAMPLES and not child.epilog:
            child.epilog = f"example:\n  {EXAMPLES[choice.dest]}"
            child.formatter_class = _Help


def _digits(where: Path) -> str:
    """Which code finds a Modbus float32's shortest digits: the optional C module, where the build found a
    compiler (setup.py), else Python (the same values, about 9 us more CPU a poll of 20). The module's file is
    loaded on its own (about 1 ms), without importing the driver, since every command builds this parser; a
    file that does not load (a broken build, another platform's) is named with the loader's reason."""
    name = "dcim.drivers.modbus._float32"
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = where / "drivers" / "modbus" / f"_float32{suffix}"
        if not path.is_file():
            continue
        try:
            spec = importlib.util.spec_from_file_location(
                name, path, loader=importlib.machinery.ExtensionFileLoader(name, str(path)))
            assert spec is not None
            importlib.util.module_from_spec(spec)
        except ImportError as err:
            return f"float32 digits in Python: the C module {path.name} did not load: {err}"
        return "float32 digits in C"
    return "float32 digits in Python: the C module was not built"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcim", description=DESCRIPTION, epilog=EPILOG, formatter_class=_Help)
    where = Path(dcim.__file__ or "dcim").parent  # which dcim runs: a wheel's, a checkout's
    parser.add_argument("--version", action="version",
                        version=f"dcim {__version__} from {where} (Python {sys.version.split()[0]}; {_digits(where)})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-c", "--config", required=True, help="configuration file (YAML)")
        return p

    with_config(sub.add_parser("run", help="run the daemon")).set_defaults(func=cmd_run)
    with_config(sub.add_parser("check", help="validate a configuration")).set_defaults(func=cmd_check)
    sub.add_parser("schema", help="print the configuration's JSON Schema").set_defaults(func=cmd_schema)
    sim = with_config(sub.add_parser("simulate", help="serve the configuration's simulated devices"))
    sim.add_argument("--control-port", type=int, default=None, help="HTTP endpoint for fault injection")
    sim.add_argument("--seed", type=int, default=1, help="seed of the simulated plant's noise (default 1)")
    sim.add_argument("--frozen", action="store_true", help="no dynamics and no noise (for tests)")
    sim.set_defaults(func=cmd_simulate)
    read = with_config(sub.add_parser("read", help="read a device once and print its points"))
    read.add_argument("device", help="a device id of the configuration")
    read.add_argument("--json", action="store_true", help="print the samples as JSON")
    read.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the device (default 15)")
    read.set_defaults(func=cmd_read)
    ingest = with_config(sub.add_parser("ingest", help="run only the MQTT -> InfluxDB ingest"))
    ingest.add_argument("--worker", type=int, default=None, metavar="K",
                        help="run as worker K of a `dcim run` with ingest.workers (started by it): state in "
                             "state_dir/ingest-workers/K, no HTTP API")
    ingest.set_defaults(func=cmd_ingest)
    demo = sub.add_parser("demo", help="simulated hall, embedded broker and the daemon, live")
    demo.add_argument("-c", "--config", default=None, help="configuration file (default: the packaged example hall)")
    demo.add_argument("--duration", type=float, default=None, help="stop this many seconds after the hall is served")
    demo.add_argument("--no-faults", action="store_true", help="do not inject the demo's faults")
    demo.set_defaults(func=cmd_demo)
    share = sub.add_parser("share", help="list or copy out the shipped examples, dashboards, systemd units")
    share.add_argument("name", nargs="?", choices=SHARED, help="which tree; none: list the trees and where they are")
    share.add_argument("dir", nargs="?", help="copy the tree's files here (created); none: list them")
    share.add_argument("--force", action="store_true", help="overwrite files that exist with other content")
    share.set_defaults(func=cmd_share)
    completion = sub.add_parser("completion", help="print a shell completion script (bash, zsh, tcsh)")
    completion.add_argument("shell", choices=("bash", "zsh", "tcsh"))
    completion.set_defaults(func=cmd_completion)
    for name in (*COMMAND_MODULES, *(spec.commands for spec in PROTOCOLS if spec.commands)):
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(sub)
    _describe(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
