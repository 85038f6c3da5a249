"""The audit trail: records chained by hash, fsynced appends from several writers, `dcim audit --verify`
naming the first record that was edited, removed or torn."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import pytest

from dcim.app.cli import main
from dcim.core.audit import GENESIS, AuditLog, chain_hash
from tests.writes.rig import hall


def record(n: int) -> dict[str, object]:
    return {"ts_ns": 1_700_000_000_000_000_000 + n, "origin": "cli:tester", "device": "cdu-1",
            "point": "flow_setpoint_lpm", "value": 400.0 + n, "old": 400.0, "new": 400.0 + n,
            "outcome": "verified", "reason": ""}


def filled(tmp_path: Path, count: int = 5) -> tuple[Path, AuditLog]:
    path = hall(tmp_path)
    log = AuditLog(tmp_path / "state" / "audit.log")
    for n in range(count):
        log.append(record(n))
    return path, log


def test_each_record_is_chained_to_the_previous_one(tmp_path: Path) -> None:
    _, log = filled(tmp_path, 3)
    records = list(log.records())
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert records[0]["prev"] == GENESIS
    for before, after in itertools.pairwise(records):
        assert after["prev"] == before["hash"]
    for r in records:
        assert r["hash"] == chain_hash(r["prev"], r)
    assert log.verify() == (3, None)


def test_concurrent_appenders_keep_one_chain(tmp_path: Path) -> None:
    # Two handles on one file, as the daemon and a `dcim write --direct` would have.
    path = tmp_path / "audit.log"
    logs = [AuditLog(path), AuditLog(path)]
    threads = [threading.Thread(target=lambda lg=lg: [lg.append(record(n)) for n in range(25)]) for lg in logs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert logs[0].verify() == (50, None)
    assert [r["seq"] for r in logs[0].records()] == list(range(1, 51))


def test_dcim_audit_verify_names_the_edited_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, log = filled(tmp_path)
    assert main(["audit", "-c", str(config), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "5 records, chain intact" in out and "#3 " in out
    lines = log.path.read_text().splitlines()
    edited = json.loads(lines[2])
    edited["value"] = 900.0  # someone hides what was really written
    lines[2] = json.dumps(edited, sort_keys=True, separators=(",", ":"))
    log.path.write_text("\n".join(lines) + "\n")
    assert main(["audit", "-c", str(config), "--verify"]) == 1
    err = capsys.readouterr().err
    assert "the chain breaks at line 3 (seq 3): its content does not match its hash (edited)" in err
    assert "(2 records before it are intact)" in err


def test_a_rewritten_hash_is_caught_at_the_next_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, log = filled(tmp_path)
    lines = log.path.read_text().splitlines()
    edited = json.loads(lines[1])
    edited["outcome"] = "refused"
    edited["hash"] = chain_hash(edited["prev"], edited)  # a forger who knows the scheme
    lines[1] = json.dumps(edited)
    log.path.write_text("\n".join(lines) + "\n")
    assert main(["audit", "-c", str(config), "--verify"]) == 1
    assert "line 3 (seq 3): its prev does not match" in capsys.readouterr().err


def test_a_removed_record_and_a_torn_line_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, log = filled(tmp_path)
    lines = log.path.read_text().splitlines()
    log.path.write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    assert main(["audit", "-c", str(config), "--verify"]) == 1
    assert "line 2 (seq 3): its prev does not match" in capsys.readouterr().err
    log.path.write_text("\n".join(lines) + "\n" + lines[0][:30])  # a crash in the middle of a write
    log.append(record(9))  # the next writer starts on a line of its own
    count, broken = log.verify()
    assert count == 5 and broken is not None and broken.line == 6 and "not a record" in broken.reason
