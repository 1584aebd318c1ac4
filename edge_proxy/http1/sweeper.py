"""Coarse timeouts for many connections: one timer per loop checks every connection's deadlines (head/idle,
body, and a fast-path request's first byte) each SWEEP seconds, instead of a call_later + cancel per request
on the hot path."""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_proxy.http1.server import ServerConnection

SWEEP = 0.1


class Sweeper:
    """Fires the head/idle timeouts of every connection on one loop, SWEEP seconds apart."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.conns: weakref.WeakSet[ServerConnection] = weakref.WeakSet()
        self.handle: asyncio.TimerHandle | None = None

    def add(self, conn: ServerConnection) -> None:
        self.conns.add(conn)
        if self.handle is None:
            self.handle = self.loop.call_later(SWEEP, self.sweep)

    def discard(self, conn: ServerConnection) -> None:
        self.conns.discard(conn)

    def sweep(self) -> None:
        self.handle = None
        now = time.monotonic()
        for conn in list(self.conns):
            if conn.first_byte_at and conn.first_byte_at <= now and conn.first_byte_late is not None:
                late, conn.first_byte_late, conn.first_byte_at = conn.first_byte_late, None, 0.0
                late()
            if conn.closed:
                if not conn.first_byte_at:  # a gone client's request still waiting upstream keeps its clock
                    self.conns.discard(conn)
                continue
            if conn._deadline and conn._deadline <= now:
                conn._timeout()
            else:
                conn._check_body(now)
        if self.conns and not self.loop.is_closed():
            self.handle = self.loop.call_later(SWEEP, self.sweep)


_SWEEPERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Sweeper] = weakref.WeakKeyDictionary()


def sweeper(loop: asyncio.AbstractEventLoop) -> Sweeper:
    sweeper = _SWEEPERS.get(loop)
    if sweeper is None:
        sweeper = _SWEEPERS[loop] = Sweeper(loop)
    return sweeper
