"""Python's cyclic garbage collector, set for a daemon, and watched.

Reference counting frees almost everything the daemon allocates (samples, batches, readings, messages) the
moment it is no longer used; the cyclic collector is there for the rare cycle. Its defaults suit a short
program: the youngest generation is collected after every 700 net allocations of container objects, and
every so often a full collection walks every object the process holds. In the daemon most of those were
built at start-up and live as long as the process (modules, the configuration, profiles, compiled decode
plans, the topology, the rules bound to their subjects), and the readings it keeps live about one poll
interval, long enough to be promoted to the oldest generation before they are replaced. So the collector
ran often and found nothing, and each full collection stopped the event loop for the whole walk.

`settle()`, once start-up has built everything (and again after a reload, which replaces part of it):

- moves every object that exists into the permanent generation (`gc.freeze()`): full collections no longer
  walk what start-up built;
- collects the youngest generation after `YOUNG_THRESHOLD` net allocations instead of 700. A cycle is still
  collected: garbage in cycles is never freed by reference counting, so it counts towards the threshold
  until a collection takes it.

`freeze_grown()`, once the first poll round is done: what that round built lives as long as the process too
(each point's reading in the rules and in the console's live view, the rules' state of every subject), and
is moved to the permanent generation as well, without a collection: at 21,500 devices every full collection
walked half a million such records and stopped the event loop for 0.8 s each time. A cycle that is garbage at
that moment stays in memory, once, until the next `settle()`.

A reload calls `settle()` again: the frozen objects are thawed, one full collection takes the cycles that
the replaced configuration, topology and devices left, and what remains is frozen anew.

`paused()` holds collections off while something that will live as long as the process is built: the
configuration read from its file and the daemon's devices, rules and topology. Every few hundred container
objects allocated, the collector would walk the young ones, and every so often all of them, while they grow
by the million: at 21,500 devices that was two thirds of a 37 s start (the YAML alone: 4.6 s of composing
with the collector on, 0.85 s with it off). What the build leaves is collected by the next `settle()`.

`watch()` counts every collection and its pause per generation in `/metrics`: `dcim_gc_collections_total`,
`dcim_gc_pause_seconds` (sum and count) and `dcim_gc_pause_max_seconds`, the longest pause since start.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Iterator
from typing import Any

from dcim.core.metrics import REGISTRY

# Net allocations of container objects between two collections of the youngest generation. The older
# generations keep Python's ratios (10 and 10). Measured with 1,000 CDUs polled every second (BENCHMARKS.md),
# over the daemon's first 45 s: 3-4 collections of the youngest generation (a few milliseconds each) besides
# the settling one, against about 1,500 young, 135 middle and 12 full collections with Python's defaults
# (about 5 s of pauses in all, the longest 0.3 s).
YOUNG_THRESHOLD = 50_000

COLLECTIONS = REGISTRY.counter("dcim_gc_collections_total", "Collections of Python's cyclic garbage collector",
                               ("generation",))
PAUSE = REGISTRY.summary("dcim_gc_pause_seconds", "Time the garbage collector held the process, per collection",
                         ("generation",))
LONGEST = REGISTRY.gauge("dcim_gc_pause_max_seconds", "The longest garbage collection since start",
                         ("generation",))
FROZEN = REGISTRY.gauge("dcim_gc_frozen_objects", "Objects kept out of the collector's walk (built at start-up)")

_started: list[float] = [0.0]


@contextlib.contextmanager
def paused(freeze: bool = False) -> Iterator[None]:
    """No collection inside (`gc.disable()`), and the collector as it was after, whatever happens inside.

    The pauses of several callers may overlap (a reload binds its rules across the event loop's turns, a
    configuration is read in a thread): the collector runs again when the last of them ends, if it ran
    when the first began.

    `freeze`: what exists at the end is moved out of the collector's walk (`gc.freeze()`) before it runs
    again, for a process that calls `settle()` next (which thaws and collects it all): else the first
    young collection after would walk everything built inside (1.7 s at 21,500 devices), just before
    `settle()` walks it all again."""
    with _pause_lock:
        if _pauses[0] == 0:
            _pauses[1] = int(gc.isenabled())
        _pauses[0] += 1
        gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        with _pause_lock:
            _pauses[0] -= 1
            if _pauses[0] == 0 and _pauses[1]:
                gc.enable()


# Pauses in progress, and whether the collector ran before the first of them.
_pauses = [0, 0]
_pause_lock = threading.Lock()


def settle(young: int = YOUNG_THRESHOLD) -> int:
    """After start-up or a reload: one full collection, what is left frozen, the young threshold raised.
    Returns how many objects are frozen. Blocks for the one collection (a fraction of a second with
    thousands of devices): call it where a short stop does no harm, before polling starts or at a reload."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, old)
    frozen = gc.get_freeze_count()
    FROZEN.set(frozen)
    return frozen


def freeze_grown() -> int:
    """After the first poll round: every object that exists now out of the collector's walk (`gc.freeze()`,
    which costs no walk of its own: the generations' lists are moved as they are). Returns how many objects
    are frozen in all. The loop is not stopped: no collection runs."""
    gc.freeze()
    frozen = gc.get_freeze_count()
    FROZEN.set(frozen)
    return frozen


def _on_collect(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    pause = time.perf_counter() - _started[0]
    generation = str(info.get("generation", "?"))
    COLLECTIONS.inc(generation=generation)
    PAUSE.observe(pause, generation=generation)
    if pause > LONGEST.get(generation=generation):
        LONGEST.set(pause, generation=generation)


def watch() -> None:
    """Count every collection and its pause from now on (once per process; a second call does nothing)."""
    if _on_collect not in gc.callbacks:
        gc.callbacks.append(_on_collect)
