"""The state_dir's reserve (dcim.app.instance.Reserve) on a disk with room: made once, kept at start.
A start on a full disk gives it up: tests/e2e/test_full_disk_at_start.py (a tmpfs, as root)."""

from __future__ import annotations

from pathlib import Path

from dcim.app.instance import RESERVE_BYTES, RESERVE_NAME, Reserve


def test_the_reserve_is_made_once_with_its_blocks_and_kept_while_the_disk_has_room(tmp_path: Path) -> None:
    reserve = Reserve(tmp_path)
    free = reserve.free_bytes()
    assert free is not None and free >= 2 * RESERVE_BYTES, "the test needs a few MiB free in its tmp_path"
    assert reserve.make()
    path = tmp_path / RESERVE_NAME
    stat = path.stat()
    assert stat.st_size == RESERVE_BYTES
    assert stat.st_blocks * 512 >= RESERVE_BYTES  # allocated, not a sparse file that frees nothing
    assert reserve.make()  # already there: untouched
    assert path.stat().st_ino == stat.st_ino
    assert not reserve.release_if_full()
    assert path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [RESERVE_NAME]  # no partial file left
