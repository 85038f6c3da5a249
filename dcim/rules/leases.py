"""Setpoint leases: a value a rule action moved goes back to what it was, whatever happens to the daemon.

    actions:
      - name: leak-flow-down
        rule: cdu-leak
        target: cdu
        lease: 10m                         # opt-in: without it the new value stays
        writes: [{point: flow_setpoint_lpm, value: 300}]

When such an action writes, the point's prior value and the lease's expiry are recorded in
`{state_dir}/leases.json` (rewritten atomically: a temporary file, fsync, rename) before the write goes out,
the prior value first as the rule engine last read it and then as the write path read it just before
writing. While the alarm that triggered the action fires, the lease is renewed: whenever less than half
of it is left, it is extended to its full length again (so the file is written at most twice per lease
length, not every tick). When the alarm clears, or the lease expires unrenewed, the prior value is written
back through the same write path as any write (origin `lease:<action>`, checked, verified and audited).

A daemon that dies holding a lease renews nothing: at the next start-up, every lease found expired is
restored before anything else renews it, so a setpoint moved for an emergency returns at most one lease
length (plus one start-up) after the daemon died. A restore that the write path refuses or that fails
(not armed, a maintenance window, the rate limit, the device not answering) stays in the file and is
tried again, 10 s later at first, then less often (at most every 5 minutes).

Two actions that move the same point share one lease: the first one's prior value is the one restored,
once none of their alarms fires any more.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import structlog

from dcim.core.samples import Value

log = structlog.get_logger(__name__)

NS = 1_000_000_000
RETRY_FIRST = 10.0
RETRY_MAX = 300.0


@dataclass(slots=True)
class Lease:
    device: str
    point: str
    # What the point read before the action moved it: written back when the lease ends.
    prior: Value | None
    # What the action wrote.
    value: Value
    action: str
    duration: float
    expires_ns: int
    # The alarms that hold the lease (renewed while any of them fires).
    alarms: list[str] = field(default_factory=list)
    # Set once the lease has ended (condition cleared or expired): from then on only a restore follows.
    ending: str = ""
    attempts: int = 0
    retry_ns: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return self.device, self.point

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Lease:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class LeaseBook:
    """The leases of one state_dir, in memory and in `leases.json`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._leases: dict[tuple[str, str], Lease] = {}
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raw = []
        except (OSError, ValueError) as err:
            # A lease file we cannot read must not stop the daemon; say so loudly, the setpoints need a look.
            log.error("setpoint lease file unreadable: leased setpoints will not be restored",
                      path=str(path), error=str(err))
            raw = []
        for item in raw if isinstance(raw, list) else []:
            try:
                lease = Lease.from_dict(item)
            except TypeError as err:
                log.error("setpoint lease unreadable", item=item, error=str(err))
                continue
            self._leases[lease.key] = lease

    def get(self, device: str, point: str) -> Lease | None:
        return self._leases.get((device, point))

    def all(self) -> list[Lease]:
        return list(self._leases.values())

    def put(self, lease: Lease) -> None:
        self._leases[lease.key] = lease
        self.save()

    def drop(self, lease: Lease) -> None:
        if self._leases.get(lease.key) is lease:
            del self._leases[lease.key]
            self.save()

    def save(self) -> None:
        write_json_atomically(self.path, [lease.to_dict() for lease in self._leases.values()])


def write_json_atomically(path: Path, data: Any) -> None:
    """A reader (or a crash) sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps(data, indent=1, default=str)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def renew(lease: Lease, now: int) -> bool:
    """Extend a held lease to its full length once less than half is left; True when it changed."""
    if lease.expires_ns - now >= lease.duration * NS / 2:
        return False
    lease.expires_ns = now + round(lease.duration * NS)
    return True


def retry_after(attempts: int) -> float:
    return float(min(RETRY_MAX, RETRY_FIRST * 2 ** max(0, attempts - 1)))
