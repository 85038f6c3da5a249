"""`dcim alarms` through the real command line parser, on a store the rule service wrote."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import pytest
import yaml

from dcim.app.cli import main
from dcim.core.audit import AuditLog
from dcim.rules.store import AlarmStore
from tests.rules.rig import Rig, hall


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "dcim.yaml"
    path.write_text(yaml.safe_dump(hall(tmp_path / "state")))
    return path


async def firing_leak(tmp_path: Path) -> None:
    r = Rig(hall(tmp_path / "state"))
    r.clock.advance(1)
    r.cdu("cdu-1", leak=True)
    r.service.store.close()


async def test_list_ack_shelve_and_history(config_file: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    await firing_leak(tmp_path)
    assert main(["alarms", "-c", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert "cdu-leak/cdu-1" in out and "critical" in out

    assert main(["alarms", "-c", str(config_file), "ack", "cdu-leak/cdu-1", "--user", "alice",
                 "--comment", "on it"]) == 0
    assert "acknowledged cdu-leak/cdu-1 as alice" in capsys.readouterr().out
    assert AlarmStore(tmp_path / "state" / "alarms.db").get("cdu-leak/cdu-1").ack_by == "alice"

    assert main(["alarms", "-c", str(config_file), "shelve", "cdu-leak/cdu-1", "--for", "2h"]) == 0
    assert main(["alarms", "-c", str(config_file), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert lines[0]["acknowledged"] is True and lines[0]["shelved_until_ns"] > 0

    assert main(["alarms", "-c", str(config_file), "--all"]) == 0
    assert "firing" in capsys.readouterr().out

    assert main(["alarms", "-c", str(config_file), "maintenance", "A01", "--for", "30m",
                 "--reason", "cabling"]) == 0
    assert main(["alarms", "-c", str(config_file), "windows"]) == 0
    assert "A01" in capsys.readouterr().out

    # Each action is in the audit trail of the state_dir (`dcim audit`), chained.
    trail = AuditLog(tmp_path / "state" / "audit.log")
    records = list(trail.records())
    assert [(r["origin"], r["point"], r["value"]) for r in records] == [
        ("cli:alice", "alarm_ack", "cdu-leak/cdu-1"),
        (f"cli:{getpass.getuser()}", "alarm_shelve", "cdu-leak/cdu-1"),
        (f"cli:{getpass.getuser()}", "maintenance", "A01"),
    ]
    assert records[0]["reason"] == "on it" and trail.verify()[1] is None


async def test_errors_are_clear(config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["alarms", "-c", str(config_file)]) == 1
    assert "no alarm store" in capsys.readouterr().err
    await firing_leak(tmp_path)
    assert main(["alarms", "-c", str(config_file), "ack", "nope/x"]) == 1
    assert "no alarm 'nope/x'" in capsys.readouterr().err
    assert main(["alarms", "-c", str(config_file), "shelve", "cdu-leak/cdu-1", "--for", "soon"]) == 1
    assert "not a duration" in capsys.readouterr().err
