"""A request body travelling from the client connection to whoever consumes it, with back-pressure.

The producer (the server Protocol) calls `feed`/`finish`/`fail`. The consumer either pulls with `await read()`
or attaches a sink (`attach(on_data, on_end)`) that receives buffered chunks at once and later chunks as they
arrive, which is how the forwarder streams without a task per chunk. While no consumer keeps up, at most
`high_water` bytes are held: above it the producer is told to pause reading the socket (`on_pressure(True)`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from edge_proxy.errors import EdgeProxyError

DataSink = Callable[[bytes], None]
EndSink = Callable[[BaseException | None], None]


class BodyError(EdgeProxyError):
    """The client went away or broke framing before the body ended."""


class Body:
    def __init__(self, on_pressure: Callable[[bool], None], high_water: int = 256 * 1024) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self.received = 0
        self.done = False
        self.error: BaseException | None = None
        self._high = high_water
        self._pressure = on_pressure
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._sink: DataSink | None = None
        self._end: EndSink | None = None

    # -- producer ------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self._sink is not None:
            self._sink(data)
            return
        self._chunks.append(data)
        self._size += len(data)
        if self._size > self._high and not self._paused:
            self._paused = True
            self._pressure(True)
        self._wake()

    def finish(self) -> None:
        self.done = True
        if self._end is not None:
            end, self._end, self._sink = self._end, None, None
            end(None)
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if self.done:
            return
        self.done = True
        self.error = exc
        if self._end is not None:
            end, self._end, self._sink = self._end, None, None
            end(exc)
        self._wake()

    # -- consumer ------------------------------------------------------------------------------

    def attach(self, on_data: DataSink, on_end: EndSink) -> None:
        """Stream the body into callbacks: what is buffered now, then each chunk as it arrives."""
        chunks, self._chunks, self._size = self._chunks, [], 0
        for data in chunks:
            on_data(data)
        self._release()
        if self.done:
            on_end(self.error)
            return
        self._sink, self._end = on_data, on_end

    def detach(self) -> None:
        self._sink = self._end = None

    async def read(self) -> bytes:
        """The next chunk; b"" at the end. Raises BodyError if the client broke off."""
        while not self._chunks:
            if self.done:
                if self.error is not None:
                    raise BodyError(str(self.error)) from self.error
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._chunks.pop(0)
        self._size -= len(data)
        if self._size <= self._high // 2:
            self._release()
        return data

    async def read_all(self, limit: int) -> bytes | None:
        """The whole body, or None once it exceeds `limit` bytes (what was read is then lost)."""
        parts: list[bytes] = []
        total = 0
        while data := await self.read():
            total += len(data)
            if total > limit:
                return None
            parts.append(data)
        return b"".join(parts)

    def _release(self) -> None:
        if self._paused:
            self._paused = False
            self._pressure(False)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
