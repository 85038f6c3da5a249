"""The garbage collector set for a daemon: start-up's objects frozen, the young threshold raised, cycles
still collected, and every collection counted in /metrics."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from dcim.core import collector
from dcim.core.metrics import REGISTRY


@pytest.fixture
def restored() -> Iterator[None]:
    """Each test leaves the interpreter's collector as it found it (the rest of the suite runs after)."""
    thresholds = gc.get_threshold()
    callbacks = list(gc.callbacks)
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    gc.callbacks[:] = callbacks
    collector._pauses[:] = [0, 0]  # no pause left open by a test that failed inside one
    gc.enable()


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> Node:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a


def test_settle_freezes_what_exists_and_raises_the_young_threshold(restored: None) -> None:
    kept = cycle()  # alive at settle: frozen, not collected
    frozen = collector.settle()
    assert frozen == gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == collector.YOUNG_THRESHOLD
    assert collector.FROZEN.get() == frozen
    assert kept.other is not None and kept.other.other is kept


def test_a_cycle_made_after_settle_is_still_collected_without_being_asked(restored: None) -> None:
    collector.settle(young=1_000)
    gone: list[int] = []
    first = cycle()
    weakref.finalize(first, gone.append, 1)
    del first
    assert not gone  # a cycle: reference counting cannot free it
    # Allocations past the young threshold: the collector runs by itself and takes the cycle.
    for _ in range(20):
        _ = [cycle() for _ in range(1_000)]
        if gone:
            break
    assert gone == [1]


def test_settle_again_thaws_and_collects_what_a_reload_let_go(restored: None) -> None:
    gone: list[int] = []
    old = cycle()  # built before the first settle: frozen with it, as start-up's configuration is
    weakref.finalize(old, gone.append, 1)
    collector.settle()
    del old  # a reload replaced it; a frozen cycle is never collected...
    gc.collect()
    assert not gone
    collector.settle()  # ...until the reload settles again
    assert gone == [1]


def test_every_collection_is_counted_with_its_pause(restored: None) -> None:
    collector.watch()
    collector.watch()  # a second call adds no second callback
    assert gc.callbacks.count(collector._on_collect) == 1
    count = collector.COLLECTIONS.get(generation="2")
    pauses = collector.PAUSE.counts.get(("2",), 0)
    gc.collect()
    assert collector.COLLECTIONS.get(generation="2") == count + 1
    assert collector.PAUSE.counts[("2",)] == pauses + 1
    assert collector.LONGEST.get(generation="2") > 0
    text = REGISTRY.render()
    for name in ("dcim_gc_collections_total", "dcim_gc_pause_seconds_sum", "dcim_gc_pause_max_seconds",
                 "dcim_gc_frozen_objects"):
        assert f"\n{name}" in text or text.startswith(name)


def test_freeze_grown_freezes_what_the_first_round_built_without_a_collection(restored: None) -> None:
    collector.settle()
    collector.watch()
    frozen = gc.get_freeze_count()
    records = [Node() for _ in range(5_000)]  # what a first poll round builds, to live as long as the process
    collections = collector.COLLECTIONS.get(generation="2")
    assert collector.freeze_grown() == gc.get_freeze_count() >= frozen + len(records)
    assert collector.FROZEN.get() == gc.get_freeze_count()
    assert collector.COLLECTIONS.get(generation="2") == collections  # no walk of its own
    assert not any(gc.is_tracked(r) and r in gc.get_objects() for r in records[:3])  # out of every generation
    # A cycle made afterwards is collected as before.
    gone: list[int] = []
    later = cycle()
    weakref.finalize(later, gone.append, 1)
    del later
    gc.collect()
    assert gone == [1]


def test_paused_holds_collections_off_and_leaves_the_collector_as_it_was(restored: None) -> None:
    started: list[int] = []
    gc.callbacks.append(lambda phase, info: phase == "start" and started.append(info["generation"]))
    gc.set_threshold(10)  # a collection every ten container allocations, when on
    with collector.paused():
        started.clear()  # those since the callback was added
        built = [[i] for i in range(10_000)]
        assert not gc.isenabled()
        during = list(started)
    assert during == [] and len(built) == 10_000
    assert gc.isenabled()
    [[i] for i in range(1_000)]
    assert started, "the collector runs again after"
    with pytest.raises(RuntimeError), collector.paused():
        raise RuntimeError("a build that fails")
    assert gc.isenabled()
    gc.disable()  # off before: still off after
    with collector.paused():
        pass
    assert not gc.isenabled()


def test_paused_with_freeze_moves_what_was_built_out_of_the_walk(restored: None) -> None:
    before = gc.get_freeze_count()
    with collector.paused(freeze=True):
        built = [[i] for i in range(10_000)]
    assert gc.get_freeze_count() >= before + 10_000
    assert gc.isenabled() and len(built) == 10_000
    collector.settle()  # thawed, collected, frozen anew, as the daemon does next


def test_overlapping_pauses_end_with_the_last_of_them(restored: None) -> None:
    """A reload's pause spans the event loop's turns, and a configuration is read with one in a thread: the
    collector runs again when the last pause ends, not when the first one does."""
    first, second = collector.paused(), collector.paused()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not gc.isenabled(), "the second pause still holds"
    second.__exit__(None, None, None)
    assert gc.isenabled()

    import threading

    inside, release = threading.Event(), threading.Event()

    def read_in_a_thread() -> None:
        with collector.paused():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=read_in_a_thread)
    with collector.paused():
        thread.start()
        assert inside.wait(10)
    assert not gc.isenabled(), "the thread's pause still holds"
    release.set()
    thread.join(10)
    assert gc.isenabled()
