"""The durable outbox: order, priority, bound, and nothing lost across a close and reopen."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dcim.core.outbox import Outbox


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = Outbox(tmp_path / "o.sqlite", name="t", max_items=10)
    await box.open()
    writer = asyncio.create_task(box.run())
    yield box
    writer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writer
    await box.close()


async def test_priority_then_age(outbox: Outbox) -> None:
    outbox.put("t", b"1", priority=1)
    outbox.put("a", b"alarm", priority=0, retain=True)
    outbox.put("t", b"2", priority=1)
    items = await outbox.take(10)
    assert [i.payload for i in items] == [b"alarm", b"1", b"2"]
    assert items[0].retain and not items[1].retain


async def test_take_returns_same_items_until_acked(outbox: Outbox) -> None:
    outbox.put("t", b"1")
    outbox.put("t", b"2")
    first = await outbox.take(1)
    again = await outbox.take(1)
    assert first == again
    await outbox.ack(first)
    assert [i.payload for i in await outbox.take(5)] == [b"2"]


async def test_take_waits_for_put(outbox: Outbox) -> None:
    waiter = asyncio.create_task(outbox.take(5))
    await asyncio.sleep(0)
    assert not waiter.done()
    outbox.put("t", b"late")
    items = await asyncio.wait_for(waiter, 5)
    assert items[0].payload == b"late"


async def test_bound_drops_oldest_telemetry_first(outbox: Outbox) -> None:
    outbox.put("alarm", b"keep", priority=0)
    for n in range(15):
        outbox.put("t", str(n).encode())
    await outbox.flush()
    items = await outbox.take(100)
    assert len(items) == 10
    assert outbox.dropped == 6
    assert items[0].payload == b"keep"
    assert [i.payload for i in items[1:]] == [str(n).encode() for n in range(6, 15)]


async def test_close_writes_buffer_and_reopen_finds_it(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", name="t", max_items=100)
    await box.open()
    box.put("t", b"unsent-1")
    box.put("t", b"unsent-2")
    await box.close()  # no writer task ever ran: close must still persist the buffer
    again = Outbox(tmp_path / "o.sqlite", name="t", max_items=100)
    await again.open()
    assert again.depth == 2
    assert [i.payload for i in await again.take(10)] == [b"unsent-1", b"unsent-2"]
    await again.close()
