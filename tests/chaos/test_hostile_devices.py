"""`dcim run` as a process polling a hostile SNMP agent next to a good Modbus CDU, over a real mosquitto.

The agent (a UDP server in this test, bound before the daemon starts) answers every GET with 200-byte
INTEGERs and every GETBULK with the next rows of a table that never ends. Before the BER bounds, the first
killed the daemon within seconds (OverflowError in the scaling) and the second grew it by 660 MiB in 90 s.
Here the daemon must keep running, its memory must stay bounded, the good CDU must keep being polled
(counted in MQTT messages, not seconds), and the hostile PDU must be reported with its reasons.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dcim.drivers.snmp import fast
from dcim.simulators.plant import Plant
from tests.drivers.test_snmp_hostile import Agent, Request, bind, integer, raw_tlv, response
from tests.e2e.harness import DaemonProcess, cdu_hall, load, simulators
from tests.receivers import MqttRecorder

pytestmark = pytest.mark.e2e

HUGE = raw_tlv(0x02, b"\x7f" + b"\xff" * 199)
# Rows this agent invents end with an arc from here on: a cursor that ends below it is a column's prefix.
FIRST_ROW = 1_000_000


def hostile(request: Request) -> bytes:
    if request.tag == fast.GETBULK:
        width = len(request.oids)
        cursors = [(*oid[:-1], oid[-1] + 1) if oid[-1] >= FIRST_ROW else (*oid, FIRST_ROW)
                   for oid in request.oids]
        binds = []
        for rep in range(max(1, request.b)):
            for column in range(width):
                cursor = cursors[column]
                binds.append(bind((*cursor[:-1], cursor[-1] + rep), integer(rep)))
        return response(request.community, request.request_id, binds)
    return response(request.community, request.request_id, [bind(oid, HUGE) for oid in request.oids])


@pytest.fixture
async def hostile_agent() -> AsyncIterator[tuple[Agent, int]]:
    loop = asyncio.get_running_loop()
    transport, agent = await loop.create_datagram_endpoint(lambda: Agent(hostile), local_addr=("127.0.0.1", 0))
    try:
        yield agent, transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


async def test_daemon_survives_a_hostile_pdu_and_keeps_polling_the_good_cdu(
    tmp_path: Path, mosquitto: Any, hostile_agent: tuple[Agent, int],
) -> None:
    agent, port = hostile_agent
    path = cdu_hall(tmp_path, mqtt=mosquitto, cdus=1, interval="500ms")
    raw = yaml.safe_load(path.read_text())
    raw["devices"].append({
        "id": "pdu-evil", "kind": "pdu", "protocol": "snmp", "host": "127.0.0.1", "port": port,
        "profile": "apc-rpdu2", "community": "public", "interval": "500ms", "timeout": "500ms", "retries": 0,
        "deadline": "10s", "max_walk_rows": 2000,
    })
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    config = load(path)
    plant = Plant(config, frozen=True)
    async with simulators(config, plant), \
            MqttRecorder(mosquitto.host, mosquitto.port, "dcim/hall-1/cdu/cdu-1", "dcim/hall-1/pdu/pdu-evil") as mqtt:
        with DaemonProcess(path) as daemon:
            assert daemon.process is not None
            pid = daemon.process.pid

            def good(message: Any) -> bool:
                return bool(message.topic.endswith("/cdu/cdu-1"))

            def evil(message: Any) -> bool:
                return bool(message.topic.endswith("/pdu/pdu-evil"))

            # Both devices polled a few times: the hostile walks have begun (the agent has seen GETBULKs).
            await mqtt.wait_for(10, timeout=120, where=good)
            await mqtt.wait_for(3, timeout=120, where=evil)
            assert agent.seen.get(fast.GETBULK, 0) > 0
            early = rss_kib(pid)
            # Many more polls of the good CDU while the hostile PDU is polled alongside: 30 more, 15 s or
            # longer, in which an unbounded walk would grow the daemon by about 100 MiB (7 MiB a second).
            await mqtt.wait_for(40, timeout=300, where=good)
            late = rss_kib(pid)
            polls_of_evil = len(mqtt.recorder.matching(evil))
            assert daemon.process.poll() is None, daemon.log()
            assert daemon.stop() == 0, daemon.log()
    log = daemon.log()
    assert "OverflowError" not in log and "Traceback" not in log, log
    # Memory: the walks stop at 2,000 rows a column and the OID caches at their bound; nothing accumulates
    # per poll. (Unbounded, RSS grew by about 7 MiB a second.)
    assert late - early < 64 * 1024, (early, late, polls_of_evil)
    assert late < 512 * 1024, late
    payloads = b"\n".join(m.payload for m in mqtt.recorder.matching(evil))
    assert b"INTEGER of 200 bytes" in payloads
    assert b"walk stopped at max_walk_rows (2000 rows)" in payloads
