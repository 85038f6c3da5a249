"""The journal's cost per message: what every reading pays to be durable between the pipeline and its
consumers (the MQTT publisher and the in-process ingest), in the daemon's own `dcim.core.journal`.

Each second-long round puts what a hall of N CDUs puts (the saturation bench's shape): per CDU one poll's
message (a line of 24 fields, about 1.1 KB, for both consumers) and two derived messages of the rules tick
(a rack's and the plant's, about 150 bytes each). Two consumer tasks take and acknowledge as the daemon's
do: "mqtt" takes up to 500 at a time and acknowledges them at once (a broker that keeps up), "ingest" takes
up to 5,000 and acknowledges them after `--ingest-lag` seconds (its database write). Nothing is sent
anywhere: this is the journal alone, its SQLite writer thread (inserts, the consumers' acknowledgements,
deletes, group commits) and its Python bookkeeping on the event loop (put, take, ack).

Printed per message and per point (24 points a poll, 3 messages a poll): the CPU of the threads other
than the event loop's (the SQLite writer's), the event loop thread's, and the rows still on disk at the end
(bounded: nothing accumulates). Rounds are not paced by the wall clock: each round is put as soon as the
consumers have taken the round before, so the figure is the cost of the work, not of waiting.

    .venv/bin/python bench/bench_journal.py                   # 1,000 CDUs, 20 rounds
    .venv/bin/python bench/bench_journal.py --devices 4000 --rounds 10
    .venv/bin/python bench/bench_journal.py --tree ../before  # an older checkout (a git worktree)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POINTS = 24  # a generic-cdu poll
DERIVED = 2  # a rack's and the plant's batch, per CDU and tick


def poll_payload(device: int) -> bytes:
    fields = ",".join(f"point_{i}={20 + i + device % 7}.{i:03d}" for i in range(POINTS))
    return f"cdu,device=cdu-{device},rack=R{device},room=dh1,row=A,site=hall-1 {fields} 1764800000000000000".encode()


def derived_payload(device: int, kind: str) -> bytes:
    return (f"{kind},device=R{device},room=dh1,row=A,site=hall-1 cooling_budget_kw=150.0,"
            f"cooled_utilization_pct=71.5 1764800000000000000").encode()


async def consume(cursor: object, limit: int, lag: float, taken: list[int], progress: asyncio.Event) -> None:
    while True:
        items = await cursor.take(limit)  # type: ignore[attr-defined]
        if lag:
            await asyncio.sleep(lag)
        await cursor.ack(items)  # type: ignore[attr-defined]
        taken[0] += len(items)
        progress.set()


async def run(devices: int, rounds: int, lag: float, workdir: Path) -> None:
    from dcim.core.journal import Journal

    journal = Journal(workdir / "journal.db", consumers={"mqtt": 2_000_000, "ingest": 2_000_000})
    await journal.open()
    mqtt, ingest = journal.cursor("mqtt"), journal.cursor("ingest")
    both = ("ingest",)
    polls = [(f"dcim/hall-1/cdu/cdu-{d}", poll_payload(d)) for d in range(devices)]
    derived = [(f"dcim/hall-1/{kind}/{d}", derived_payload(d, kind))
               for d in range(devices) for kind in ("rack", "plant")]
    counts = {"mqtt": [0], "ingest": [0]}
    progress = asyncio.Event()
    tasks = [asyncio.create_task(journal.run()),
             asyncio.create_task(consume(mqtt, 500, 0.0, counts["mqtt"], progress)),
             asyncio.create_task(consume(ingest, 5000, lag, counts["ingest"], progress))]

    def put_round() -> None:
        for key, payload in polls:
            mqtt.put(key, payload, also=both)
        for key, payload in derived:
            mqtt.put(key, payload, also=both)

    async def caught_up(expected: int) -> None:
        while counts["mqtt"][0] < expected or counts["ingest"][0] < expected:
            progress.clear()
            await progress.wait()

    per_round = devices * (1 + DERIVED)
    put_round()  # the first round opens the statements' caches: not measured
    await caught_up(per_round)
    process0, loop0 = time.process_time(), time.thread_time()
    started = time.perf_counter()
    for r in range(rounds):
        put_round()
        await caught_up(per_round * (r + 2))
    wall = time.perf_counter() - started
    await journal.flush()
    loop = time.thread_time() - loop0
    writer = time.process_time() - process0 - loop  # the other threads: the SQLite writer's
    on_disk = (await journal.db.call(lambda db: db.execute("SELECT count(*) FROM journal").fetchone()))[0]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await journal.close()
    messages = per_round * rounds
    points = devices * POINTS * rounds
    print(f"{devices:>6} {rounds:>6} {messages:>9,} {writer / messages * 1e6:>10.1f} {loop / messages * 1e6:>10.1f} "
          f"{writer / points * 1e6:>10.2f} {loop / points * 1e6:>10.2f} {messages / wall:>10,.0f} {on_disk:>8}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, nargs="*", default=[1000])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--ingest-lag", type=float, default=0.2,
                        help="seconds between the ingest's take and its acknowledgement (default 0.2)")
    parser.add_argument("--quick", action="store_true", help="5 rounds (make bench BENCH_ARGS=--quick)")
    parser.add_argument("--tree", type=Path, help="import dcim from this source tree")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # one measurement, in this process
    args = parser.parse_args()
    if args.quick:
        args.rounds = 5
    if args.one is not None:
        import logging

        import structlog

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(run(args.one, args.rounds, args.ingest_lag, Path(tmp)))
        return
    sys.path.insert(0, str(REPO / "bench"))
    from benchlib import machine

    tree = (args.tree or REPO).resolve()
    print(f"machine: {machine()}; tree: {tree}")
    print(f"{'N':>6} {'rounds':>6} {'messages':>9} {'writer':>10} {'loop':>10} {'writer':>10} {'loop':>10} "
          f"{'msgs/s':>10} {'left':>8}")
    print(f"{'':>6} {'':>6} {'':>9} {'us/msg':>10} {'us/msg':>10} {'us/pt':>10} {'us/pt':>10}")
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for n in args.devices:
        # A process per size (and per tree): nothing cached from the one before.
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one", str(n), "--rounds", str(args.rounds),
                        "--ingest-lag", str(args.ingest_lag)], env=env, cwd=tree, check=True)


if __name__ == "__main__":
    main()
