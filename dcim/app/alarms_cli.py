"""`dcim alarms`: list and operate alarms, on the alarm store file (no daemon needed).

    dcim alarms -c FILE                      active alarms (firing)
    dcim alarms -c FILE --all [--limit N]    history, newest first
    dcim alarms -c FILE ack KEY [--user U] [--comment TEXT]
    dcim alarms -c FILE shelve KEY --for 2h [--user U]
    dcim alarms -c FILE unshelve KEY
    dcim alarms -c FILE maintenance SUBJECT --for 2h [--reason TEXT]   (a rack or device id)
    dcim alarms -c FILE windows              maintenance windows not yet over

It works on `{state_dir}/{rules.store}` directly: a running daemon picks up acknowledgements, shelves and
maintenance windows written here at its next tick (about a second), and a stopped one at start-up.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dcim.core.audit import AuditLog, alarm_action
from dcim.core.config import parse_duration
from dcim.rules.leak import describe as leak_stage
from dcim.rules.leak import load_incidents
from dcim.rules.store import AlarmNotActive, AlarmNotFound, AlarmRecord, AlarmStore

NS = 1_000_000_000


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "alarms", help="list, acknowledge and shelve alarms; maintenance windows")
    parser.add_argument("-c", "--config", required=True, help="configuration file (YAML)")
    parser.add_argument("--all", action="store_true", help="history of state changes, newest first")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    parser.set_defaults(func=cmd_alarms, alarm_action="list")
    actions = parser.add_subparsers(dest="alarm_action", metavar="ACTION")
    ack = actions.add_parser("ack", help="acknowledge a firing alarm")
    ack.add_argument("key")
    ack.add_argument("--user", default=None)
    ack.add_argument("--comment", default="")
    shelve = actions.add_parser("shelve", help="hold back an alarm's notifications for a while")
    shelve.add_argument("key")
    shelve.add_argument("--for", dest="duration", required=True, help="e.g. 30m, 2h")
    shelve.add_argument("--user", default=None)
    unshelve = actions.add_parser("unshelve", help="end a shelve")
    unshelve.add_argument("key")
    maint = actions.add_parser("maintenance", help="open a maintenance window on a rack or device now")
    maint.add_argument("subject")
    maint.add_argument("--for", dest="duration", required=True, help="e.g. 30m, 2h")
    maint.add_argument("--reason", default="")
    actions.add_parser("windows", help="maintenance windows not yet over")


def _when(ts_ns: int | None) -> str:
    if not ts_ns:
        return "-"
    return datetime.fromtimestamp(ts_ns / NS, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _table(records: list[AlarmRecord], history: bool, leak: dict[str, dict[str, Any]] | None = None) -> str:
    if not records:
        return "no alarms" if not history else "no history"
    lines = [f"{'SINCE' if not history else 'AT':19}  {'SEVERITY':8}  {'STATE':8}  {'KEY':44}  NOTES / MESSAGE"]
    for r in records:
        notes = []
        if r.acknowledged:
            notes.append(f"ack by {r.ack_by}")
        if r.shelved_until_ns:
            notes.append(f"shelved until {_when(r.shelved_until_ns)}")
        if r.suppressed:
            # e.g. "suppressed: inhibited by cdu-leak/cdu-1": the alarm that speaks for this one.
            notes.append(f"suppressed: {r.suppressed}")
        if not history and leak and r.key in leak:
            notes.append(leak_stage(leak[r.key]))  # the tiered leak response's stage and plan (rules/leak.py)
        at = r.updated_ns if history else (r.fired_ns or r.since_ns)
        note = f"[{', '.join(notes)}] " if notes else ""
        lines.append(f"{_when(at):19}  {r.severity!s:8}  {r.state!s:8}  {r.key:44}  {note}{r.message}")
    return "\n".join(lines)


def _duration(text: str) -> float:
    seconds = float(parse_duration(text))
    if seconds <= 0:
        raise ValueError(f"not a positive duration: {text!r}")
    return seconds


def cmd_alarms(args: argparse.Namespace) -> int:
    from dcim.app.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(err.render(), file=sys.stderr)
        return 2
    path = Path(config.state_dir) / config.rules.store
    if not path.exists():
        print(f"no alarm store at {path} (the daemon creates it when it first runs)", file=sys.stderr)
        return 1
    store = AlarmStore(path)
    args.state_dir = Path(config.state_dir)
    user = getattr(args, "user", None) or getpass.getuser()
    try:
        return _run(args, store, user)
    except AlarmNotFound as err:
        print(f"no alarm {err.args[0]!r} (see `dcim alarms -c {args.config}`)", file=sys.stderr)
        return 1
    except (AlarmNotActive, ValueError) as err:
        print(str(err), file=sys.stderr)
        return 1
    finally:
        store.close()


def _audit(args: argparse.Namespace, user: str, subject: str, action: str, value: str, outcome: str,
           reason: str) -> None:
    """The action in the audit trail of the state_dir (`dcim audit`), as the console and the HTTP API record
    theirs. The store has done it: a trail that cannot be written is said, not turned into a failure."""
    state_dir = getattr(args, "state_dir", None)
    if state_dir is None:
        return
    try:
        AuditLog(Path(state_dir) / "audit.log").append(
            alarm_action(f"cli:{user}", subject, action, value, outcome, reason, time.time_ns()))
    except OSError as err:
        print(f"warning: not recorded in the audit trail: {err}", file=sys.stderr)


def _print(items: list[dict[str, Any]] | str, as_json: bool) -> None:
    if as_json and not isinstance(items, str):
        for item in items:
            print(json.dumps(item, sort_keys=True))
    else:
        print(items)


def _run(args: argparse.Namespace, store: AlarmStore, user: str) -> int:
    action = args.alarm_action or "list"
    now = time.time_ns()
    if action == "list":
        records = store.history(args.limit) if args.all else store.active()
        state_dir = getattr(args, "state_dir", None)
        leak = load_incidents(state_dir) if state_dir is not None and not args.all else {}
        _print([{**r.to_dict(), **({"leak_response": leak[r.key]} if r.key in leak else {})} for r in records]
               if args.json else _table(records, args.all, leak), args.json)
    elif action == "ack":
        record = store.acknowledge(args.key, user, args.comment)
        print(f"acknowledged {record.key} as {user}")
        _audit(args, user, record.subject, "alarm_ack", record.key, "acknowledged", args.comment)
    elif action == "shelve":
        until = now + round(_duration(args.duration) * NS)
        record = store.shelve(args.key, until, user)
        print(f"shelved {record.key} until {_when(until)} UTC")
        _audit(args, user, record.subject, "alarm_shelve", record.key, "shelved", f"until {_when(until)} UTC")
    elif action == "unshelve":
        record = store.unshelve(args.key)
        print(f"unshelved {record.key}")
        _audit(args, user, record.subject, "alarm_unshelve", record.key, "unshelved", "")
    elif action == "maintenance":
        end = now + round(_duration(args.duration) * NS)
        window = store.add_maintenance(args.subject, now, end, args.reason)
        print(f"maintenance window {window.id} on {window.subject} until {_when(end)} UTC")
        _audit(args, user, window.subject, "maintenance", window.subject, "window opened",
               f"until {_when(end)} UTC: {args.reason}" if args.reason else f"until {_when(end)} UTC")
    elif action == "windows":
        windows = store.maintenance()
        if args.json:
            _print([w.to_dict() for w in windows], True)
        elif not windows:
            print("no maintenance windows")
        for w in windows:
            print(f"{w.id:4}  {w.subject:20}  {_when(w.start_ns)} .. {_when(w.end_ns)}  {w.reason}")
    return 0
