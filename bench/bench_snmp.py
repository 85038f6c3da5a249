"""SNMP driver throughput: N simulated PDUs with 48 outlets each (half APC rPDU2, half Raritan PX), all polled
concurrently, one poll each per round.

The drivers run here, directly (no poller, MQTT or database); the SNMP simulator runs in a child process, so
its CPU is not counted. For each N it prints points per round, the round's wall time, points per second and
this process' CPU milliseconds per 1,000 points (time.process_time), and failed polls.

Request layers compared (`--layers`):
  driver       the driver as shipped: its own BER codec (drivers/snmp/fast.py; SNMPv3 USM in fast_v3.py),
               one UDP socket
  pysnmp       the driver's requests straight into pysnmp's command generators, through one shared engine,
               numeric ObjectNames kept per OID, no MIB look-ups (drivers/snmp/session.py)
  hlapi        the same polls through pysnmp's hlapi (get_cmd/bulk_cmd) done carefully: one engine, target
               and auth objects built once, ObjectTypes built once per OID, lookupMib=False
  hlapi-naive  hlapi as its examples use it: a new UdpTransportTarget and CommunityData per request,
               ObjectType(ObjectIdentity("1.3.6...")) per varbind per request, lookupMib left on

    python bench/bench_snmp.py                   # N = 10, 100, 300; every layer; 3 measured rounds
    python bench/bench_snmp.py --quick           # N = 10, 100; driver, pysnmp and hlapi-naive; 2 rounds
    python bench/bench_snmp.py --sizes 50 --layers driver --v3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchlib import free_ports, machine  # noqa: E402
from pysnmp.hlapi import varbinds as hlapi_varbinds  # noqa: E402
from pysnmp.hlapi.v3arch import asyncio as hlapi  # noqa: E402

from dcim.app.config import parse_config  # noqa: E402
from dcim.drivers.base import DriverContext  # noqa: E402
from dcim.drivers.errors import DriverError  # noqa: E402
from dcim.drivers.profiles import load_profile  # noqa: E402
from dcim.drivers.snmp.config import SnmpDevice  # noqa: E402
from dcim.drivers.snmp.driver import SnmpDriver  # noqa: E402
from dcim.drivers.snmp.session import Oid, Session, VarBind  # noqa: E402
from dcim.drivers.snmp.usm import auth_protocol, priv_protocol  # noqa: E402

OUTLETS = 48



def config_raw(n: int, v3: bool) -> dict[str, Any]:
    security: dict[str, Any] = {"community": "public", "write_community": "private"}
    if v3:
        security = {"version": "3", "user": "bench", "auth_protocol": "sha256", "auth_key": "env:BENCH_AUTH",
                    "priv_protocol": "aes128", "priv_key": "env:BENCH_PRIV"}
    devices = [{"id": f"pdu-{i}", "kind": "pdu", "protocol": "snmp", "host": "127.0.0.1", "port": port,
                "profile": "apc-rpdu2" if i % 2 else "raritan-px", "interval": "10s", "timeout": "10s",
                "retries": 1, "deadline": "60s", **security}
               for i, port in enumerate(free_ports(n, socket.SOCK_DGRAM), start=1)]
    racks = [{"id": f"R{i}", "cooling": "air", "power_budget_kw": 50,
              "feeds": {"a": {"pdu": f"pdu-{2 * i - 1}", "breaker_a": 63},
                        **({"b": {"pdu": f"pdu-{2 * i}", "breaker_a": 63}} if 2 * i <= n else {})}}
             for i in range(1, (n + 1) // 2 + 1)]
    return {"site": {"id": "bench"}, "rooms": [{"id": "dh1", "rows": [{"id": "A", "racks": racks}]}],
            "devices": devices}


# ---- the simulator, in a child process -------------------------------------------------------------------

def serve_main(path: str) -> None:
    from dcim.simulators.plant import Plant
    from dcim.simulators.snmp import SnmpSimulator

    config = parse_config(json.loads(Path(path).read_text()))
    plant = Plant(config, frozen=True)
    for rack in plant.racks.values():
        rack.outlets = OUTLETS

    async def run() -> None:
        async with SnmpSimulator(plant, config.devices, refresh=1.0):  # type: ignore[arg-type]
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    asyncio.run(run())


# ---- hlapi request layers, for comparison ------------------------------------------------------------------

class HlapiSession:
    """The driver's Session interface over pysnmp's hlapi."""

    def __init__(self, device: SnmpDevice, engine: Any, naive: bool) -> None:
        self.device = device
        self.engine = engine
        self.naive = naive
        self.target: Any = None
        self.auth = self._auth()
        self.objects: dict[Oid, Any] = {}

    def _auth(self) -> Any:
        d = self.device
        if d.version == "3":
            return hlapi.UsmUserData(
                d.user, d.auth_key.get_secret_value() if d.auth_key else None,
                d.priv_key.get_secret_value() if d.priv_key else None,
                authProtocol=auth_protocol(d.auth_protocol), privProtocol=priv_protocol(d.priv_protocol))
        return hlapi.CommunityData(d.community, mpModel=0 if d.version == "1" else 1)

    async def _target(self) -> Any:
        if self.target is None or self.naive:
            self.target = await hlapi.UdpTransportTarget.create(
                (self.device.host, self.device.port), timeout=self.device.timeout, retries=self.device.retries)
        return self.target

    def _objects(self, oids: Sequence[Oid]) -> list[Any]:
        if self.naive:
            return [hlapi.ObjectType(hlapi.ObjectIdentity(".".join(map(str, oid)))) for oid in oids]
        out = []
        for oid in oids:
            found = self.objects.get(oid)
            if found is None:
                found = hlapi.ObjectType(hlapi.ObjectIdentity(oid))
                found.resolve_with_mib(hlapi_varbinds.CommandGeneratorVarBinds.get_mib_view_controller(
                    self.engine.cache))
                self.objects[oid] = found
            out.append(found)
        return out

    def _result(self, answer: Any) -> list[VarBind]:
        indication, status, _index, var_binds = answer
        if indication or status:
            raise DriverError(f"{self.device.id}: {indication or status}")
        return [(tuple(vb[0]), vb[1]) for vb in var_binds]

    async def get(self, oids: Sequence[Oid]) -> list[VarBind]:
        auth = self._auth() if self.naive else self.auth
        options = {} if self.naive else {"lookupMib": False}
        return self._result(await hlapi.get_cmd(self.engine, auth, await self._target(), hlapi.ContextData(),
                                                *self._objects(oids), **options))

    async def bulk(self, oids: Sequence[Oid], max_repetitions: int) -> list[VarBind]:
        auth = self._auth() if self.naive else self.auth
        options = {} if self.naive else {"lookupMib": False}
        return self._result(await hlapi.bulk_cmd(self.engine, auth, await self._target(), hlapi.ContextData(),
                                                 0, max_repetitions, *self._objects(oids), **options))

    def close(self) -> None:
        return None


# ---- measurement ---------------------------------------------------------------------------------------------

async def measure(raw: dict[str, Any], layer: str, rounds: int) -> dict[str, float]:
    config = parse_config(raw)
    context = DriverContext()
    engine = hlapi.SnmpEngine() if layer.startswith("hlapi") else None
    drivers: list[SnmpDriver] = []
    for device in config.devices:
        assert isinstance(device, SnmpDevice)
        driver = SnmpDriver(device, load_profile(device.profile), context)
        if engine is not None:
            driver.session = HlapiSession(device, engine, naive=layer == "hlapi-naive")  # type: ignore[assignment]
        elif layer == "pysnmp":
            driver.session = Session(device, context)
        drivers.append(driver)

    async def poll(driver: SnmpDriver) -> int:
        try:
            return len(await driver.read())
        except DriverError:
            return -1

    await asyncio.gather(*(poll(d) for d in drivers))  # warm-up: decimal digits, engine discovery
    points = failures = 0
    wall = cpu = 0.0
    for _ in range(rounds):
        started, cpu_started = time.perf_counter(), time.process_time()
        counts = await asyncio.gather(*(poll(d) for d in drivers))
        wall += time.perf_counter() - started
        cpu += time.process_time() - cpu_started
        points += sum(c for c in counts if c > 0)
        failures += sum(1 for c in counts if c < 0)
    for driver in drivers:
        await driver.close()
    if engine is not None:
        engine.close_dispatcher()
    return {"points_per_round": points / rounds, "round_s": wall / rounds, "points_per_s": points / wall,
            "cpu_ms_per_1000": cpu * 1e6 / max(points, 1), "failed_polls": failures}



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 10, 100; driver, pysnmp, hlapi-naive; 2 rounds")
    parser.add_argument("--sizes", type=int, nargs="*")
    parser.add_argument("--layers", nargs="*", choices=("driver", "pysnmp", "hlapi", "hlapi-naive"))
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--v3", action="store_true", help="SNMPv3 authPriv (SHA-256 + AES-128) instead of v2c")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("BENCH_AUTH", "bench-auth-key")
    os.environ.setdefault("BENCH_PRIV", "bench-priv-key")
    if args.serve:
        serve_main(args.serve)
        return
    sizes = args.sizes or ([10, 100] if args.quick else [10, 100, 300])
    layers = args.layers or (["driver", "pysnmp", "hlapi-naive"] if args.quick
                             else ["driver", "pysnmp", "hlapi", "hlapi-naive"])
    rounds = args.rounds or (2 if args.quick else 3)
    print(f"machine: {machine()}; {OUTLETS} outlets per PDU; SNMP {'v3 authPriv' if args.v3 else 'v2c'}")
    print(f"{'N':>5} {'layer':<12} {'points/round':>12} {'round s':>8} {'points/s':>9} {'CPU ms/1000 pts':>16} "
          f"{'failed':>6}")
    for n in sizes:
        raw = config_raw(n, args.v3)
        path = Path(f"/tmp/bench-snmp-{os.getpid()}-{n}.json")
        path.write_text(json.dumps(raw))
        child = subprocess.Popen([sys.executable, __file__, "--serve", str(path)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            for line in child.stdout:  # the simulator may log before it says so
                if line.strip() == "ready":
                    break
            else:
                raise SystemExit("the simulator did not start")
            for layer in layers:
                result = asyncio.run(measure(raw, layer, rounds))
                print(f"{n:>5} {layer:<12} {result['points_per_round']:>12.0f} {result['round_s']:>8.3f} "
                      f"{result['points_per_s']:>9.0f} {result['cpu_ms_per_1000']:>16.1f} "
                      f"{result['failed_polls']:>6.0f}", flush=True)
        finally:
            if child.stdin is not None:
                child.stdin.close()
            child.wait(timeout=30)
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
