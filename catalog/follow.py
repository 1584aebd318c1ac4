"""Snapshot + subscribe-from-version: how services keep an in-memory State current.

A follower takes a snapshot, then polls the change log for versions after the one it holds. The poll
is one indexed query (`version > ?`), cheap enough to run every 20 ms, and WAL readers never wait on
writers, so a change reaches every process on the machine in tens of milliseconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from catalog.models import Change
from catalog.state import State
from catalog.store import Catalog

DEFAULT_INTERVAL = 0.02


class Follower:
    """A State kept current from a catalog; restart it from `state.version` to miss nothing."""

    def __init__(self, catalog: Catalog, state: State | None = None) -> None:
        self.catalog = catalog
        self.state = state if state is not None else catalog.snapshot()

    def poll(self) -> list[Change]:
        """Apply and return every change after the held version, in order."""
        changes = self.catalog.changes_since(self.state.version)
        for change in changes:
            self.state.apply(change)
        return changes

    async def run(
        self, on_change: Callable[[State, list[Change]], None], interval: float = DEFAULT_INTERVAL
    ) -> None:
        """Call `on_change` after each batch of changes, forever (cancel the task to stop)."""
        while True:
            changes = self.poll()
            if changes:
                on_change(self.state, changes)
            await asyncio.sleep(interval)


async def follow(catalog: Catalog, after: int, interval: float = DEFAULT_INTERVAL) -> AsyncIterator[Change]:
    """Every change after version `after`, exactly once and in order, waiting for new ones."""
    version = after
    while True:
        changes = catalog.changes_since(version)
        for change in changes:
            version = change.version
            yield change
        if not changes:
            await asyncio.sleep(interval)
