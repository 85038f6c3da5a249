"""A minimal asyncio service using dcim.app.sdnotify the way the daemon does (run by test_sdnotify.py).

    NOTIFY_SOCKET=/tmp/x WATCHDOG_USEC=200000 python notify_program.py [STALL_SECONDS]

A "work" task ticks (the daemon's poll rounds); READY goes out after the first tick; the watchdog pings
while the last tick is recent; SIGUSR2 blocks the loop for STALL_SECONDS (1 by default), as a wedged main
loop would; SIGTERM stops with STOPPING=1.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

from dcim.app.sdnotify import Notifier, watchdog_interval


def stall(seconds: float) -> None:
    time.sleep(seconds)  # blocking on purpose: the wedged main loop the watchdog must notice


async def main() -> None:
    notifier = Notifier.from_env()
    assert notifier is not None, "NOTIFY_SOCKET is not set"
    interval = watchdog_interval(None)
    assert interval is not None, "WATCHDOG_USEC is not set"
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR2, stall, float(sys.argv[1]) if len(sys.argv) > 1 else 1.0)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    ticks = 0
    last = time.monotonic()
    first = asyncio.Event()

    async def work() -> None:
        nonlocal ticks, last
        while True:
            ticks += 1
            last = time.monotonic()
            first.set()
            await asyncio.sleep(interval / 2)

    def alive() -> bool:
        return time.monotonic() - last < interval * 3

    async with asyncio.TaskGroup() as tg:
        worker = tg.create_task(work(), name="work")
        await first.wait()
        notifier.ready(f"{ticks} ticks")
        dog = tg.create_task(notifier.watchdog_loop(interval, alive), name="watchdog")
        await stop.wait()
        notifier.stopping("bye")
        worker.cancel()
        dog.cancel()
    notifier.close()


if __name__ == "__main__":
    asyncio.run(main())
