"""Notification latency and throughput: from `Notifier.submit` to the webhook request arriving at a local
HTTP receiver, through the whole path (router, rate limiter, render, durable SQLite outbox, delivery).

    .venv/bin/python bench/bench_notify.py [--quick]

group_wait is 0 here: in production the latency is group_wait (30 s by default) by design, plus this.
The receiver is an aiohttp server in the same process and event loop, so the figures include its share.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

from aiohttp import web
from benchlib import machine

from dcim.core.events import AlarmEvent, AlarmState, Severity
from dcim.rules.notify import Notifier
from dcim.rules.notify.config import NotifyConfig


class Receiver:
    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.waiters: dict[str, asyncio.Future[float]] = {}
        self.count = 0
        self.all_done: asyncio.Event = asyncio.Event()
        self.expected = 0

    async def handle(self, request: web.Request) -> web.Response:
        data = await request.json()
        now = time.perf_counter()
        for alarm in data["alarms"]:
            self.arrived[alarm["key"]] = now
            waiter = self.waiters.pop(alarm["key"], None)
            if waiter is not None and not waiter.done():
                waiter.set_result(now)
        self.count += 1
        if self.expected and self.count >= self.expected:
            self.all_done.set()
        return web.json_response({"ok": True})


def make_event(i: int) -> AlarmEvent:
    rack = f"R{i:05d}"
    return AlarmEvent(key=f"rack-power:{rack}", rule="rack-power", subject=rack, state=AlarmState.FIRING,
                      severity=Severity.CRITICAL, ts_ns=time.time_ns(), message="over budget",
                      metric="power_kw", value=61.5, threshold=57.0,
                      labels={"site": "hall-1", "room": "dh1", "row": "R", "rack": rack})



def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def bench(latency_n: int, burst_n: int) -> None:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    config = NotifyConfig.model_validate({
        "hooks": {"bench": {"type": "webhook", "url": f"http://127.0.0.1:{port}/hook", "secret": None}},
        "group_wait": 0, "group_interval": 1, "repeat_interval": 0,
        "rate_limit": {"per_hook_per_minute": 10_000_000, "global_per_minute": 10_000_000},
        "outbox_max_items": 1_000_000,
    })
    with tempfile.TemporaryDirectory() as tmp:
        notifier = Notifier(config, Path(tmp))
        task = asyncio.create_task(notifier.run())
        await notifier.ready.wait()
        loop = asyncio.get_running_loop()

        # 1. One alarm at a time: submit, wait for it to arrive.
        latencies = []
        for i in range(latency_n):
            event = make_event(i)
            arrived = loop.create_future()
            receiver.waiters[event.key] = arrived
            started = time.perf_counter()
            notifier.submit(event)
            latencies.append((await arrived) - started)
        lat_ms = [x * 1000 for x in latencies]

        # 2. A burst: burst_n alarms (each its own rack, so each its own message) submitted at once.
        receiver.count = 0
        receiver.expected = burst_n
        events = [make_event(latency_n + i) for i in range(burst_n)]
        started = time.perf_counter()
        submit_started = time.perf_counter()
        for event in events:
            notifier.submit(event)
        submit_s = time.perf_counter() - submit_started
        await receiver.all_done.wait()
        burst_s = time.perf_counter() - started
        burst_lat = [(receiver.arrived[e.key] - started) * 1000 for e in events]

        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await runner.cleanup()

    print(f"machine: {machine()}")
    print(f"submit -> webhook received, one at a time (n={latency_n}):")
    print(f"  p50 {statistics.median(lat_ms):.2f} ms   p99 {percentile(lat_ms, 0.99):.2f} ms   "
          f"max {max(lat_ms):.2f} ms")
    print(f"burst of {burst_n} alarms on {burst_n} racks (one message each):")
    print(f"  submit() of all: {submit_s * 1e6 / burst_n:.2f} us per event")
    print(f"  delivered in {burst_s:.2f} s = {burst_n / burst_s:.0f} messages/s; "
          f"time to arrival p50 {statistics.median(burst_lat):.0f} ms, p99 {percentile(burst_lat, 0.99):.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run")
    args = parser.parse_args()
    if args.quick:
        asyncio.run(bench(latency_n=100, burst_n=300))
    else:
        asyncio.run(bench(latency_n=1000, burst_n=3000))


if __name__ == "__main__":
    main()
