"""The publisher's send path alone: batches of QoS 1 messages through `MqttPublisher._send` to mosquitto.

Prints, per broker Receive Maximum (mosquitto's `max_inflight_messages`, announced to MQTT 5 clients): the
publisher's CPU and wall time per message, with the window the publisher kept. No devices, no journal: the
cost of handing a message to the broker and counting its PUBACK, which every reading pays once. The
publisher's `_client()` and `_send` are used as they are, so the same script measures a tree whose publisher
goes through aiomqtt and paho (up to commit bfb235e) and one with the project's own client
(dcim/app/mqttwire.py).

    python bench/bench_publish.py                        # 40 batches of 500 per broker setting
    python bench/bench_publish.py --quick                # 10 batches
    python bench/bench_publish.py --tree ../before       # the same against another source tree (before/after)
    python bench/bench_publish.py --protocol 3.1.1       # MQTT 3.1.1 (the broker announces no Receive Maximum)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def payload() -> bytes:
    fields = b",".join(b"p%d=%d.123" % (i, i) for i in range(24))
    return b"cdu,device=cdu-1,site=hall-1,room=dh1,row=A,rack=R1 " + fields + b" 1700000000000000000"


async def measure(port: int, batches: int, protocol: str) -> tuple[float, float, int]:
    publisher_module = importlib.import_module("dcim.app.publisher")
    config_module = importlib.import_module("dcim.app.config")
    topology_module = importlib.import_module("dcim.core.topology")
    outbox_module = importlib.import_module("dcim.core.outbox")
    config = config_module.Config.model_validate({"site": {"id": "bench"},
                                                  "mqtt": {"host": "127.0.0.1", "port": port,
                                                           "protocol": protocol}})
    publisher = publisher_module.MqttPublisher(config.mqtt, topology_module.Topology(config), None)
    body = payload()
    items = [outbox_module.Item(i + 1, f"dcim/bench/cdu/cdu-{i % 1000}", body, 1)
             for i in range(publisher_module.SEND_BATCH)]
    async with publisher._client() as client:
        for _ in range(3):  # warm up
            await publisher._send(client, items)
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(batches):
            await publisher._send(client, items)
        count = batches * len(items)
        return ((time.process_time() - cpu) / count * 1e6, (time.perf_counter() - wall) / count * 1e6,
                int(getattr(publisher, "window", 0)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 batches per setting")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--tree", type=Path, default=None, help="run the publisher of this source tree")
    parser.add_argument("--protocol", choices=("5", "3.1.1"), default="5", help="MQTT version (default 5)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from benchlib import machine

    from tests.servers import Mosquitto
    if args.tree is not None:
        sys.path.insert(0, str(args.tree.resolve()))
        for name in [m for m in sys.modules if m == "dcim" or m.startswith("dcim.")]:
            del sys.modules[name]
    batches = 10 if args.quick else args.batches
    print(f"machine: {machine()}; tree: {args.tree or REPO}; {batches} batches of 500 messages of "
          f"{len(payload())} B, QoS 1, MQTT {args.protocol}")
    print(f"{'broker max_inflight':>20} {'window':>7} {'CPU us/msg':>11} {'wall us/msg':>12}")
    for inflight in (20, 100):
        with tempfile.TemporaryDirectory() as tmp, \
                Mosquitto(Path(tmp) / "mosquitto", extra_config=[f"max_inflight_messages {inflight}"]) as broker:
            cpu, wall, window = asyncio.run(measure(broker.port, batches, args.protocol))
        print(f"{inflight:>20} {window or '-':>7} {cpu:>11.1f} {wall:>12.1f}")


if __name__ == "__main__":
    main()
