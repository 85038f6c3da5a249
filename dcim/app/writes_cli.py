"""`dcim write` and `dcim audit`: writes through the one write path, and the audit trail they leave.

    dcim write -c FILE DEVICE POINT VALUE [--yes] [--dry-run] [--direct] [--user U]
    dcim audit -c FILE [--verify] [--json] [--limit N]

`dcim write` sends the write to the running daemon (POST /api/v1/devices/{device}/points/{point} with
http.token), so the daemon's guard (rules.writes) checks it, verifies it by read-back and records it. When no
daemon answers, nothing is written unless `--direct` is given: then this process runs the same guard
itself (profile, the device's own range, armed, maintenance windows from the alarm store, rate from the
audit trail) and appends to the same audit trail. `--direct` while a daemon answers is refused: the
daemon's rate limit and connections must not be bypassed.

A write that stops equipment (outlet off or cycle, a chiller or pump stop) is confirmed first: `--yes`, or
a "yes" typed at the prompt. Without a terminal and without `--yes` the write is refused (and recorded).
`--dry-run` runs every check that needs no write and shows what would be sent; it sends nothing.

Exit status: 0 verified (or dry run passed), 1 refused, failed or not verified, 2 usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from dcim.core.audit import AuditLog
from dcim.core.samples import Value

PROBE_SECONDS = 2.0


def register(subparsers: Any) -> None:
    write: argparse.ArgumentParser = subparsers.add_parser(
        "write", help="write one point of a device (guarded, verified, audited)")
    write.add_argument("-c", "--config", required=True, help="configuration file (YAML)")
    write.add_argument("device")
    write.add_argument("point", help="canonical point, e.g. flow_setpoint_lpm or outlet_command:7")
    write.add_argument("value")
    write.add_argument("--yes", action="store_true", help="confirm a write that stops equipment")
    write.add_argument("--dry-run", action="store_true", help="check and show what would be sent; send nothing")
    write.add_argument("--direct", action="store_true", help="write without the daemon (only when none runs)")
    write.add_argument("--user", default=None, help="who asks (default: the login name)")
    write.add_argument("--timeout", type=float, default=30.0)
    write.set_defaults(func=cmd_write)
    audit: argparse.ArgumentParser = subparsers.add_parser("audit", help="list the write audit trail; verify it")
    audit.add_argument("-c", "--config", required=True, help="configuration file (YAML)")
    audit.add_argument("--verify", action="store_true", help="check the hash chain; name the first bad record")
    audit.add_argument("--json", action="store_true", help="the records as JSON lines")
    audit.add_argument("--limit", type=int, default=0, help="only the last N records (0: all)")
    audit.set_defaults(func=cmd_audit)


def audit_path(config: Any) -> Path:
    return Path(config.state_dir) / "audit.log"


def parse_value(text: str) -> Value:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


# ---- dcim write ---------------------------------------------------------------------------------------


def cmd_write(args: argparse.Namespace) -> int:
    from dcim.app.cli import _device_driver, _load
    from dcim.core.logs import setup_logging

    config = _load(args.config)
    setup_logging("warning", "console")
    driver = _device_driver(config, args.device)  # exits 2 for an unknown device
    value = parse_value(args.value)
    user = args.user or _login()
    stops = _stops(driver, args.point, value)
    try:
        return asyncio.run(asyncio.wait_for(_write(config, driver, args, value, user, stops), args.timeout))
    except TimeoutError:
        print(f"{args.device}: no outcome within {args.timeout:g} s", file=sys.stderr)
        return 1


async def _write(config: Any, driver: Any, args: argparse.Namespace, value: Value, user: str, stops: bool) -> int:
    url = _daemon_url(config)
    daemon_up = url is not None and await _answers(url, config)
    if daemon_up and args.direct:
        print(f"a daemon answers at {url}: writes go through it (run without --direct)", file=sys.stderr)
        return 2
    if not daemon_up and not args.direct:
        where = f"at {url}" if url else "(http.enabled is false)"
        print(f"no daemon answers {where}: nothing written. To write without the daemon, add --direct "
              f"(the same checks run here)", file=sys.stderr)
        return 2
    lock = None
    if not daemon_up:
        # A daemon on this state_dir that did not answer (bound elsewhere, busy) must not get a second writer
        # beside it: its instance lock says it runs. Held until the write is done, so none starts meanwhile.
        from dcim.app.instance import InstanceLock, StartupError

        lock = InstanceLock(config.state_dir)
        try:
            lock.acquire()
        except StartupError as err:
            print(f"{err}: writes go through that daemon (its HTTP API did not answer at {url or 'no address'})",
                  file=sys.stderr)
            return 2
    try:
        confirmed = args.yes or args.dry_run or not stops or _ask(args.device, args.point, value)
        if daemon_up:
            assert url is not None
            result = await _through_daemon(config, url, args, value, user, confirmed)
        else:
            result = await _direct(config, driver, args, value, user, confirmed)
    finally:
        if lock is not None:
            lock.release()
    if result is None:
        return 2
    _print(result)
    return 0 if result.get("outcome") in ("verified", "dry-run") else 1


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _stops(driver: Any, point: str, value: Value) -> bool:
    from dcim.drivers.errors import WriteRejected
    from dcim.rules.writes import stops_equipment, writable_spec

    try:
        spec = writable_spec(driver, point)
        return stops_equipment(spec, spec.check_write(value))
    except WriteRejected:
        return False  # the guard refuses it anyway, with the reason


def _ask(device: str, point: str, value: Value) -> bool:
    if not sys.stdin.isatty():
        print(f"{device} {point} <- {value} stops equipment and stdin is not a terminal: not confirmed "
              f"(add --yes)", file=sys.stderr)
        return False
    answer = input(f"{device} {point} <- {value} stops equipment. Type yes to go on: ")
    return answer.strip().lower() == "yes"


def _daemon_url(config: Any) -> str | None:
    http = config.http
    if not http.enabled or not http.port:
        return None
    host = "127.0.0.1" if http.host in ("0.0.0.0", "", "::") else http.host
    scheme = "https" if http.tls_cert_file else "http"
    return f"{scheme}://[{host}]:{http.port}" if ":" in host else f"{scheme}://{host}:{http.port}"


def _tls(config: Any) -> Any:
    """For a daemon serving HTTPS: trust its own certificate (often self-signed), whatever name it carries,
    since the address is the configuration's, not a name to check. None (aiohttp's default) for HTTP."""
    if not config.http.tls_cert_file:
        return None
    import ssl

    context = ssl.create_default_context(cafile=str(config.http.tls_cert_file))
    context.check_hostname = False
    return context


async def _answers(url: str, config: Any) -> bool:
    import aiohttp

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_SECONDS)) as session, \
                session.get(f"{url}/healthz", ssl=_tls(config)) as response:
            return response.status in (200, 503)
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


async def _through_daemon(config: Any, url: str, args: argparse.Namespace, value: Value, user: str,
                          confirmed: bool) -> dict[str, Any] | None:
    from urllib.parse import quote

    import aiohttp

    if config.http.token is None:
        print(f"the daemon at {url} takes writes only with http.token, and the configuration has none",
              file=sys.stderr)
        return None
    headers = {"Authorization": f"Bearer {config.http.token.get_secret_value()}"}
    body = {"value": value, "user": user, "dry_run": args.dry_run, "confirm": confirmed}
    target = f"{url}/api/v1/devices/{quote(args.device, safe='')}/points/{quote(args.point, safe=':')}"
    async with aiohttp.ClientSession() as session, session.post(target, json=body, headers=headers,
                                                                   ssl=_tls(config)) as response:
        data = await response.json(content_type=None)
    if not isinstance(data, dict) or "outcome" not in data:
        print(f"the daemon answered {response.status}: {data}", file=sys.stderr)
        return None
    return data


async def _direct(config: Any, driver: Any, args: argparse.Namespace, value: Value, user: str,
                  confirmed: bool) -> dict[str, Any]:
    from dcim.core.topology import Topology
    from dcim.rules.store import AlarmStore
    from dcim.rules.writes import WriteGuard, WriteRequest

    store = AlarmStore(Path(config.state_dir) / config.rules.store)
    guard = WriteGuard(config.rules.control, Topology(config), drivers=lambda d: driver if d == args.device else None,
                       maintenance=store, audit=AuditLog(audit_path(config)), connect=True)
    try:
        result = await guard.write(WriteRequest(args.device, args.point, value, origin=f"cli:{user}",
                                                dry_run=args.dry_run, confirmed=confirmed))
    finally:
        await driver.close()
        store.close()
    return result.to_dict()


def _print(result: dict[str, Any]) -> None:
    head = f"{result['device']} {result['point']} <- {_fmt(result['value'])}"
    seq = f" [audit #{result['seq']}]" if result.get("seq") else ""
    outcome = result["outcome"]
    if outcome == "dry-run":
        print(f"{head}: dry run, nothing sent. Would send {result['raw']} to {result['address']}{seq}")
    elif outcome == "verified":
        print(f"{head}: verified (was {_fmt(result['old'])}, reads back {_fmt(result['new'])}){seq}")
    elif outcome == "unverified":
        print(f"{head}: sent, NOT verified: {result['reason']}{seq}", file=sys.stderr)
    elif outcome == "failed":
        print(f"{head}: failed: {result['reason']}{seq}", file=sys.stderr)
    else:
        print(f"{head}: refused, nothing sent: {result['reason']}{seq}", file=sys.stderr)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return str(value).lower() if isinstance(value, bool) else str(value)


# ---- dcim audit ---------------------------------------------------------------------------------------


def cmd_audit(args: argparse.Namespace) -> int:
    from dcim.app.cli import _load

    config = _load(args.config)
    log = AuditLog(audit_path(config))
    records = list(log.records())
    if args.limit > 0:
        records = records[-args.limit:]
    for record in records:
        if args.json:
            print(json.dumps(record, sort_keys=True))
        else:
            change = f"{_fmt(record.get('old'))} -> {_fmt(record.get('value'))}"
            if record.get("outcome") in ("verified", "unverified"):
                change += f" (reads {_fmt(record.get('new'))})"
            reason = f"  {record['reason']}" if record.get("reason") else ""
            print(f"#{record.get('seq')} {record.get('time')} {record.get('origin')} {record.get('device')} "
                  f"{record.get('point')} {change} {record.get('outcome')}{reason}")
    if not args.verify:
        return 0
    count, broken = log.verify()
    if broken is not None:
        print(f"{log.path}: the chain breaks at {broken} ({count} records before it are intact)", file=sys.stderr)
        return 1
    print(f"{log.path}: {count} records, chain intact", file=sys.stderr if args.json else sys.stdout)
    return 0
