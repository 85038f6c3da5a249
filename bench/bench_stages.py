"""One poll's stages alone, under timeit: what a read of 20 float32 points costs in each consumer.

No devices, no sockets, no event loop: the decode plan of `bench/profiles/bench-pdu-f32.yaml` (20 float32
input registers, the issue's device) turns one answer's bytes into samples, then the live view and the line
protocol take the batch, as the daemon's poll -> MQTT path does. Prints microseconds a poll for each stage,
the best of the repeats. Decoding is timed both ways where the C module of the float32 digits is built
(`dcim/drivers/modbus/_float32.c`) and with the Python code alone.

The values are a meter's full-precision floats (7-9 significant digits: two or three tries each) or, with
`--rounded`, the plant's rounded ones (230.4: one try). Pure CPU: a slower host shows here first, which is
how BENCHMARKS.md tells the host's speed from the code's.

    python bench/bench_stages.py                  # this checkout
    python bench/bench_stages.py --tree ../before # another source tree (a `git archive`, with its C module
                                                  # copied in or built: `python setup.py build_ext --inplace`)
    python bench/bench_stages.py --quick          # fewer repeats
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import timeit
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=None, help="time this source tree's code")
    parser.add_argument("--rounded", action="store_true", help="the plant's rounded values (one try each)")
    parser.add_argument("--quick", action="store_true", help="3 repeats of 5,000 polls (default 7 of 20,000)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "bench"))
    from benchlib import machine

    tree = (args.tree or REPO).resolve()
    sys.path.insert(0, str(tree))
    from dcim.app.console.live import LiveState
    from dcim.core.lineproto import encode_batch
    from dcim.core.samples import Batch, Sample
    from dcim.drivers.modbus import decodeplan
    from dcim.drivers.modbus.plan import plan_reads
    from dcim.drivers.profiles import load_profile

    profile = load_profile("bench-pdu-f32", extra_dirs=(REPO / "bench" / "profiles",))
    (read,) = plan_reads(profile.points, max_gap=0)
    decoder = decodeplan.ReadDecoder(read)
    rng = random.Random(3)
    count = len(read.points)
    values = [round(rng.uniform(0.1, 900), 1) if args.rounded else rng.uniform(0.1, 900) for _ in range(count)]
    data = struct.pack(f">{count}f", *values)
    samples: list[Sample] = []
    decoder.samples(data, "pdu-1", 1, samples)
    batch = Batch("pdu-1", "pdu", 1, samples)
    live = LiveState()
    tags = (("room", "dh1"), ("row", "A"), ("site", "hall-1"))
    number, repeat = (5_000, 3) if args.quick else (20_000, 7)
    names: dict[str, Any] = dict(decoder=decoder, data=data, live=live, batch=batch, encode_batch=encode_batch,
                                 tags=tags)
    native = getattr(decodeplan, "_native_shortest_float32s", None)

    def best(statement: str) -> float:
        return min(timeit.repeat(statement, globals=names, number=number, repeat=repeat)) / number * 1e6

    print(f"machine: {machine()}; tree: {tree}; {count} float32 points, "
          f"{'the plant' if args.rounded else 'a meter'}'s values; best of {repeat} x {number:,} polls")
    decode = "out = []; decoder.samples(data, 'pdu-1', 1, out)"
    rows = []
    if native is not None:
        rows.append(("decode into samples, float32 digits in C", best(decode)))
    decodeplan._native_shortest_float32s = None  # type: ignore[attr-defined]
    try:
        rows.append(("decode into samples, float32 digits in Python", best(decode)))
    finally:
        decodeplan._native_shortest_float32s = native  # type: ignore[attr-defined]
    rows.append(("live view (LiveState.on_batch)", best("live.on_batch(batch)")))
    rows.append(("line protocol (encode_batch, joined, bytes)", best("'\\n'.join(encode_batch(batch, tags)).encode()")))
    for label, us in rows:
        print(f"{us:8.2f} us a poll  {label}")


if __name__ == "__main__":
    main()
