"""Fixtures for the rule engine tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rules.rig import Rig, hall


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(hall(tmp_path))
    yield r
    r.service.store.close()
