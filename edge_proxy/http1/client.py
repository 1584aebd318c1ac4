"""The upstream side: an HTTP/1.1 client Protocol and a bounded keep-alive pool per (host, port).

An `UpstreamConnection` carries one exchange at a time (no pipelining upstream). Whoever holds it sets a
`ResponseSink` and writes the request; the connection calls the sink back as the response arrives.

    pool = UpstreamPool(max_per_key=64)
    conn = await pool.acquire(("fdaa::2", 8080), connect_timeout=2.0)
    conn.sink = my_sink; conn.write(request_bytes)
    ... sink.response_end() ... pool.release(conn)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol, cast

import httptools

from edge_proxy.errors import UpstreamError
from edge_proxy.http1 import head as h
from edge_proxy.http1.head import set_nodelay

Key = tuple[str, int]


class ResponseSink(Protocol):
    def response_head(self, head: h.ResponseHead) -> None: ...
    def response_data(self, data: bytes) -> None: ...
    def response_end(self) -> None: ...
    def upstream_lost(self, exc: BaseException) -> None: ...
    def upstream_writable(self, writable: bool) -> None: ...
    def tunnel_data(self, data: bytes) -> None: ...
    def flush(self) -> None: ...


class LaneFlight(Protocol):
    """A request answered from the read callbacks, without an Exchange (edge_proxy.lane.Flight)."""

    def response(self, data: bytes) -> bool: ...  # False: it materialized, the parser takes `data`
    def materialize(self) -> object: ...  # become the connection's current Exchange with a sink


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, key: Key, pool: UpstreamPool | None = None) -> None:
        self.key = key
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.sink: ResponseSink | None = None
        self.method = b"GET"
        self.closed = False
        self.reusable = True
        self.responded = False  # some response bytes arrived for the current request
        self.requests = 0
        self.idle_since = 0.0
        self.tunnel = False
        # A request in flight on the edge's lane (see ServerConnection.lane): offered each read first; it
        # answers simple responses itself and otherwise sets `sink` (materialize) and lets the parser go on.
        self.lane: LaneFlight | None = None
        # Inside `feed_data`: a release from a parser callback waits in `released_at` until the read is parsed
        # to its end, so bytes after a response can never be taken for the next request's (RFC 9112 §9.3.2).
        self.feeding = False
        self.released_at = 0.0
        self._headers: h.Headers = []
        self._status = 0
        self._in_info = False
        self._paused = False
        self._reason = b""

    # -- asyncio.Protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.transport = transport
        transport.set_write_buffer_limits(high=256 * 1024)
        set_nodelay(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lane is not None:
            self.lane.materialize()
        self.closed = True
        self.reusable = False
        if self.pool is not None:
            self.pool._lost(self)
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.upstream_lost(exc or ConnectionResetError("upstream closed the connection"))

    def data_received(self, data: bytes) -> None:
        if self.lane is not None and self.lane.response(data):
            return
        if self.tunnel:
            if self.sink is not None:
                self.sink.tunnel_data(data)
            return
        if self.sink is None:  # bytes on an idle connection: the server is confused or closing.
            self.reusable = False
            self.abort()
            return
        self.responded = True
        self.feeding = True
        try:
            self.parser.feed_data(data)
            if self.sink is not None:
                self.sink.flush()  # a head held back for coalescing goes out now that this read is done
        except httptools.HttpParserUpgrade as upgrade:
            self.tunnel = True
            rest = data[int(upgrade.args[0]):]
            if rest and self.sink is not None:
                self.sink.tunnel_data(rest)
        except httptools.HttpParserError as exc:
            self.reusable = False
            sink, self.sink = self.sink, None
            self.abort()
            if sink is not None:
                sink.upstream_lost(UpstreamError(f"invalid response from upstream: {exc}", sent=True))
        finally:
            self.feeding = False
        if self.released_at and self.pool is not None:
            # Released by a callback of the parse that just ended: only now may it serve another request.
            now, self.released_at = self.released_at, 0.0
            self.pool.release(self, now)

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_writable(False)

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_writable(True)

    # -- httptools callbacks ---------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.sink is None:
            # A response nobody asked for (bytes after a complete response in the same read): the connection
            # is out of step with its requests (RFC 9112 §9.3.2) and must not go back to the pool.
            raise UpstreamError("unsolicited bytes after a response", sent=True)
        self._headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_status(self, reason: bytes) -> None:
        self._reason = reason

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self._status = status
        if 100 <= status < 200 and status != 101:
            self._in_info = True  # interim responses are dropped (we never forward Expect upstream)
            return
        self._in_info = False
        framing, length = h.response_framing(status, self._headers, self.method)
        raw_version = self.parser.get_http_version()
        version = h.VERSIONS.get(raw_version) or raw_version.encode()
        keep = self.parser.should_keep_alive() and framing != "close"
        head = h.ResponseHead(status=status, headers=self._headers, reason=self._reason,
                              version=version, framing=framing, content_length=length, keep_alive=keep)
        if not keep:
            self.reusable = False
        if self.sink is not None:
            self.sink.response_head(head)
        if self.method == b"HEAD":
            # httptools cannot be told the body is absent after HEAD; this connection's parser would then
            # wait for Content-Length bytes, so end here and do not reuse it.
            self.reusable = False
            self._complete()

    def on_body(self, body: bytes) -> None:
        if self.sink is not None and not self._in_info:
            self.sink.response_data(body)

    def on_message_complete(self) -> None:
        if self._in_info:
            self._in_info = False
            return
        if self._status == 101:
            return
        self._complete()

    def _complete(self) -> None:
        sink, self.sink = self.sink, None
        self.requests += 1
        if sink is not None:
            sink.response_end()

    # -- used by the holder -----------------------------------------------------------------------------

    def begin(self, sink: ResponseSink, method: bytes) -> None:
        self.sink = sink
        self.method = method
        self.responded = False
        self._in_info = False

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def pause_reading(self, paused: bool) -> None:
        if self.transport is None or self.closed or paused == self._paused:
            return
        self._paused = paused
        with contextlib.suppress(RuntimeError):
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.transport.abort()


class UpstreamPool:
    """Keep-alive connections per (host, port): at most `max_per_key` open, `max_idle_per_key` kept idle
    for `idle_timeout` seconds. `acquire` waits for a free slot when the bound is reached."""

    def __init__(self, max_per_key: int = 256, max_idle_per_key: int = 128, idle_timeout: float = 30.0,
                 resolve: Callable[[Key], tuple[str, int]] | None = None) -> None:
        self.max_per_key = max_per_key
        self.max_idle = max_idle_per_key
        self.idle_timeout = idle_timeout
        self.resolve = resolve or (lambda key: key)
        self._idle: dict[Key, deque[UpstreamConnection]] = {}
        self._open: dict[Key, int] = {}
        self._waiters: dict[Key, deque[asyncio.Future[None]]] = {}
        self.connects = 0
        self.last_connect_time: dict[Key, float] = {}

    def open_count(self, key: Key) -> int:
        return self._open.get(key, 0)

    def take_idle(self, key: Key, now: float = 0.0) -> UpstreamConnection | None:
        """A pooled connection, without waiting (the fast path). `now`: the caller's monotonic clock reading."""
        idle = self._idle.get(key)
        if not idle:
            return None
        now = now or time.monotonic()
        while idle:
            conn = idle.pop()  # most recently used: least likely to have been closed by the server
            if not conn.closed and now - conn.idle_since < self.idle_timeout:
                return conn
            conn.close()
        return None

    def retain(self, keys: set[Key]) -> None:
        """Close idle connections to anything not in `keys` (machines gone from the catalog)."""
        for key in [k for k in self._idle if k not in keys]:
            self.drop_idle(key)

    def drop_idle(self, key: Key) -> None:
        """Close every idle connection to `key` (after one turned out to be dead)."""
        for conn in self._idle.pop(key, ()):
            conn.close()

    async def acquire(self, key: Key, connect_timeout: float) -> tuple[UpstreamConnection, bool]:
        """(connection, reused). Raises UpstreamError(connect=True) when no connection can be made."""
        conn = self.take_idle(key)
        if conn is not None:
            return conn, True
        while self._open.get(key, 0) >= self.max_per_key:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(key, deque()).append(fut)
            try:
                await asyncio.wait_for(fut, connect_timeout)
            except TimeoutError:
                raise UpstreamError(f"no free connection to {key[0]}:{key[1]}", sent=False, connect=True) from None
            conn = self.take_idle(key)
            if conn is not None:
                return conn, True
        return await self.connect(key, connect_timeout), False

    async def connect(self, key: Key, connect_timeout: float) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        host, port = self.resolve(key)
        self._open[key] = self._open.get(key, 0) + 1
        started = time.monotonic()
        try:
            async with asyncio.timeout(connect_timeout):
                _, proto = await loop.create_connection(lambda: UpstreamConnection(key, self), host, port)
        except (OSError, TimeoutError) as exc:
            self._open[key] -= 1
            self._wake(key)
            detail = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise UpstreamError(f"connect to [{host}]:{port}: {detail}", sent=False, connect=True) from None
        self.connects += 1
        self.last_connect_time[key] = time.monotonic() - started
        return proto

    def release(self, conn: UpstreamConnection, now: float = 0.0) -> None:
        """Return a connection after a complete exchange; it is kept only if still reusable."""
        conn.sink = None
        if conn.closed:
            return
        if conn.feeding:  # still parsing the read that completed this exchange: see `UpstreamConnection.feeding`
            conn.released_at = now or time.monotonic()
            return
        idle = self._idle.get(conn.key)
        if idle is None:  # not setdefault(key, deque()): that builds a deque on every release
            idle = self._idle[conn.key] = deque()
        if not conn.reusable or len(idle) >= self.max_idle:
            conn.close()
            return
        if conn._paused:
            conn.pause_reading(False)
        conn.idle_since = now or time.monotonic()
        idle.append(conn)
        self._wake(conn.key)

    def _lost(self, conn: UpstreamConnection) -> None:
        if conn.pool is not self:
            return
        conn.pool = None
        self._open[conn.key] = max(0, self._open.get(conn.key, 0) - 1)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
        self._wake(conn.key)

    def _wake(self, key: Key) -> None:
        waiters = self._waiters.get(key)
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in list(idle):
                conn.close()
        self._idle.clear()
