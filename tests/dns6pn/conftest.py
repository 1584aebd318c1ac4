from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dns6pn.world import World, build


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = build(tmp_path / "state")
    try:
        yield made
    finally:
        made.catalog.close()
