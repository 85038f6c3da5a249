"""What a scrape of /metrics costs the event loop: `Registry.render()` over the per-device series of N devices.

The registry holds the series a daemon with N Modbus devices has (N / 5 gateways, as `bench_saturation.py
--units 5` makes them): polls by result, the poll-time summary, overruns and online per device, requests and
connects per gateway. Printed: the text's size, the best and the median time of a render (the first one,
which makes what later scrapes reuse, apart), and the memory the registry keeps after a render beyond its
series (tracemalloc). Renders run on the event loop, so their time is the loop's stop at each scrape.

    python bench/bench_metrics.py                        # 21,500 devices
    python bench/bench_metrics.py --devices 1000 4300 21500
    python bench/bench_metrics.py --tree /tmp/before     # another source tree (before / after)
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def registry_for(devices: int) -> Any:
    from dcim.core.metrics import Registry

    rng = random.Random(1)
    registry = Registry()
    polls = registry.counter("dcim_polls_total", "Device polls", ("device", "result"))
    seconds = registry.summary("dcim_poll_seconds", "Time a poll took", ("device",))
    overruns = registry.counter("dcim_poll_overruns_total", "Polls started late", ("device",))
    online = registry.gauge("dcim_device_online", "1 while the device answers", ("device",))
    requests = registry.counter("dcim_modbus_requests_total", "Modbus requests", ("gateway", "result"))
    connects = registry.counter("dcim_modbus_connects_total", "Modbus connections made", ("gateway",))
    for i in range(1, devices + 1):
        device = f"cdu-{i}"
        polls.inc(rng.randint(1, 3_000_000), device=device, result="ok")
        seconds.observe(rng.random() * 1_000, device=device)
        overruns.inc(rng.randint(0, 1_000), device=device)
        online.set(1.0, device=device)
    for i in range(max(1, devices // 5)):
        gateway = f"127.0.0.1:{30_000 + i}"
        requests.inc(rng.randint(1, 10**7), gateway=gateway, result="ok")
        connects.inc(gateway=gateway)
    return registry


def measure(devices: int, rounds: int) -> str:
    registry = registry_for(devices)
    gc.collect()
    start = time.perf_counter()
    size = len(registry.render())
    first = time.perf_counter() - start
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        registry.render()
        times.append(time.perf_counter() - start)
    # What a render leaves behind, on a registry of its own (tracemalloc slows what it traces).
    registry = registry_for(devices)
    gc.collect()
    tracemalloc.start()
    registry.render()
    gc.collect()
    kept = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (f"{devices:>8,} {size / 1e6:>8.2f} MB {1000 * first:>8.0f} ms {1000 * min(times):>8.0f} ms "
            f"{1000 * statistics.median(times):>8.0f} ms {kept / 1e6:>8.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, nargs="*", default=[21_500])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="1,000 devices, 3 rounds (make bench)")
    parser.add_argument("--tree", type=Path, help="import dcim from this source tree")
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree.resolve() if args.tree else REPO))
    sys.path.insert(1, str(REPO))
    from benchlib import machine

    devices, rounds = ([1_000], 3) if args.quick else (args.devices, args.rounds)
    print(machine())
    print(f"{'devices':>8} {'text':>11} {'first':>11} {'best':>11} {'median':>11} {'kept':>11}")
    for n in devices:
        print(measure(n, rounds), flush=True)


if __name__ == "__main__":
    main()
