"""The client-facing HTTP/1.1 server Protocol: parsing with httptools (llhttp), keep-alive, pipelining,
timeouts, back-pressure, Upgrade, and the `Exchange` a handler answers.

Usage:

    async def handler(ex: Exchange) -> None:
        ex.respond(200, [(b"content-type", b"text/plain")], b"hi\\n")

    server = await loop.create_server(lambda: ServerConnection(handler, ServerLimits()), "127.0.0.1", 0)

A handler runs as one task per request; requests on one connection are handled in order. Errors in the
request (framing, oversized head, timeouts) are answered here with a coded error and never reach the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

import httptools

from edge_proxy.errors import HttpError
from edge_proxy.http1 import head as h
from edge_proxy.http1.body import BodyError
from edge_proxy.http1.client import LaneFlight
from edge_proxy.http1.exchange import Exchange, ServerLimits, error_response
from edge_proxy.http1.head import set_nodelay
from edge_proxy.http1.sweeper import sweeper

log = logging.getLogger("edge_proxy.http1")
__all__ = ["Exchange", "Handler", "ServerConnection", "ServerLimits", "error_response"]


Handler = Callable[[Exchange], Awaitable[None]]
#: Fields whose presence changes how the head is read (framing, Expect): noted while parsing.
_NOTED = frozenset({b"content-length", b"transfer-encoding", b"expect"})
_NONE: frozenset[bytes] = frozenset()


class ServerConnection(asyncio.Protocol):
    #: How `Exchange.start` spells the fields it adds (Content-Length, Transfer-Encoding, Connection); a
    #: subclass may spell them another server's way (litefs_proxy: Go's canonical names).
    framing_names: tuple[bytes, bytes, bytes] = (b"content-length", b"transfer-encoding", b"connection")

    def __init__(self, handler: Handler, limits: ServerLimits, *, scheme: str = "http",
                 on_open: Callable[[ServerConnection], None] | None = None,
                 on_close: Callable[[ServerConnection], None] | None = None) -> None:
        self.handler = handler
        self.limits = limits
        self.scheme = scheme
        self._on_open = on_open
        self._on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer: tuple[str, int] = ("", 0)
        self.local_port = 0
        self.closed = False
        self.closing = False  # close() called: nothing more is written
        self.draining = False
        self.write_listener: Callable[[bool], None] | None = None
        self.idle_timeout = limits.idle_timeout  # a handler may set the app's (fly.toml idle_timeout)
        self.state: dict[str, Any] = {}  # for the handler: per-connection data (e.g. the machine it counts on)
        self.on_reject: Callable[[ServerConnection, HttpError], None] | None = None
        # Optional callback-driven handler tried before `handler`: True means it took the exchange and will
        # call `done(ex)` (or `hand_over`) itself, with no task per request; False means "use the handler".
        self.fast: Callable[[Exchange], bool] | None = None
        # Optional hook tried with each read before the parser, while nothing is in flight: True means it took
        # the bytes (a whole simple request) and set `flight`, an object that answers it without an Exchange;
        # `flight.materialize()` turns it into the current Exchange when anything else happens first.
        self.lane: Callable[[ServerConnection, bytes], bool] | None = None
        self.flight: LaneFlight | None = None
        self.lane_prefix = b""  # the lane's per-connection request fields
        self._loop = asyncio.get_running_loop()
        self._pending: deque[Exchange] = deque()
        self._current: Exchange | None = None
        self._parsing: Exchange | None = None
        self._tunnel: Exchange | None = None
        self._tunnel_backlog: list[bytes] = []
        self._in_head = False
        self._head_bytes = 0
        self._url = b""
        self._headers: h.Headers = []
        self._size = 0
        self._noted: frozenset[bytes] = _NONE  # which of _NOTED the head carries (rarely any: no set per request)
        self._paused: set[str] = set()
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._deadline = 0.0  # monotonic time of the pending head/idle timeout; 0 = none
        self._first_deadline = 0.0  # the first head's deadline (`ServerLimits.first_head_timeout`); 0 = none
        self._body_seen = 0.0  # when request body bytes last arrived (for body_timeout)
        self._swept = False  # registered with the loop's sweeper
        # A fast-path exchange's first-byte deadline, checked by the sweeper like the head/idle ones (no
        # call_later + cancel per request); 0 = none. One exchange at a time is forwarded per connection.
        self.first_byte_at = 0.0
        self.first_byte_late: Callable[[], None] | None = None
        self._eof = False  # the client half-closed: answer what is in flight, then close
        self._task: asyncio.Task[None] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.transport = transport
        transport.set_write_buffer_limits(high=self.limits.write_high_water)
        set_nodelay(transport)
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        if peer:
            self.peer = (str(peer[0]), int(peer[1]))
        if sock:
            self.local_port = int(sock[1])
        first = self.limits.first_head_timeout
        if first is not None and first < self.limits.idle_timeout:
            self._arm(first)
            self._first_deadline = self._deadline
        else:
            self._arm(self.limits.idle_timeout)
        if self._on_open is not None:
            self._on_open(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.flight is not None:
            self.flight.materialize()
        self.closed = True
        self._disarm()
        if not self.first_byte_at:  # a gone client's request still waiting upstream keeps its clock (504, load)
            sweeper(self._loop).discard(self)
        gone = BodyError("client closed the connection")
        for ex in (self._current, self._parsing, *self._pending):
            if ex is not None:
                ex.body.fail(gone)
        if self._tunnel is not None and self._tunnel._tunnel_close is not None:
            self._tunnel._tunnel_close()
        self._wake_drain()
        if self.write_listener is not None:
            self.write_listener(True)
        if self._on_close is not None:
            self._on_close(self)

    def data_received(self, data: bytes) -> None:
        if self.flight is not None:
            self.flight.materialize()  # bytes behind a request in flight: the parser's and the Exchange's job
        elif (self.lane is not None and self._current is None and not self._in_head and self._tunnel is None
              and not self.draining and not self._write_paused and self.lane(self, data)):
            return
        if self._tunnel is not None:
            sink = self._tunnel._tunnel_sink
            if sink is None:
                self._tunnel_backlog.append(data)
            else:
                sink(data)
            return
        if self._in_head or self._parsing is None:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._begin_upgrade(data[int(upgrade.args[0]):])
            return
        except HttpError as exc:
            self._fail(exc)
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, HttpError):
                self._fail(cause)
            else:
                self._fail(HttpError(400, "PH01", f"malformed request: {exc}"))
            return
        if self._in_head and self._head_bytes > self.limits.max_head_bytes:
            self._fail(HttpError(431, "PH02", "request head too large"))

    def eof_received(self) -> bool | None:
        # A client may half-close after its request (RFC 9112 §9.6): keep writing until it is answered.
        self._eof = True
        if self.flight is not None:
            self.flight.materialize()  # the Exchange's rules: answer, with `connection: close`, then close
        if (self._current is None and not self._pending) or self.scheme == "https":
            return None
        return True

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.write_listener is not None:
            self.write_listener(False)

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()
        if self.write_listener is not None:
            self.write_listener(True)

    # -- httptools callbacks ---------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._url = b""
        self._headers = []
        self._size = 0
        self._noted = _NONE
        # Not for the first head while its deadline from the accept still stands: trickling bytes must not buy
        # a new connection more time.
        if self._current is None and not self.awaiting_first_head:
            self._arm(self.limits.header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self._headers.append((name, value))
        self._size += len(name) + len(value) + 4
        if name in _NOTED:
            self._noted = self._noted | {name}
        if len(self._headers) > self.limits.max_headers:
            raise HttpError(431, "PH02", "too many header fields")

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._size + len(self._url) > self.limits.max_head_bytes:
            raise HttpError(431, "PH02", "request head too large")
        parser = self.parser
        version = h.VERSIONS.get(parser.get_http_version())
        if version is None:
            raise HttpError(505, "PH01", "HTTP version not supported")
        headers = self._headers
        noted = self._noted
        framing: h.Framing = "none"
        length = 0
        if b"content-length" in noted or b"transfer-encoding" in noted:
            framing, length = h.request_framing(headers, version)
        upgrade = b""
        if parser.should_upgrade():
            upgrade = h.get(headers, b"upgrade") or b""
        expect = h.get(headers, b"expect") if b"expect" in noted else None
        head = h.RequestHead(
            method=self.request_method(), target=self._url, version=version, headers=headers, framing=framing,
            content_length=length, keep_alive=parser.should_keep_alive(), upgrade=upgrade,
            expect_continue=expect is not None and expect.lower() == b"100-continue" and version == b"1.1",
        )
        h.validate_request(head, self.limits.max_headers)
        self._head_bytes = 0
        self._body_seen = time.monotonic() if head.has_body else 0.0
        ex = Exchange(self, head)
        if upgrade:
            ex.close_after = True  # after a refused Upgrade the bytes that follow are not HTTP: close
        self._parsing = ex
        if self._current is None:
            self._disarm()
            self._start(ex)
        else:
            self._pending.append(ex)
            if len(self._pending) > 1:
                self.set_paused("pipeline", True)  # a request or two ahead is enough (RFC 9112 §9.3.2)

    def on_body(self, body: bytes) -> None:
        self._body_seen = time.monotonic()
        if self._parsing is not None:
            self._parsing.body.feed(body)

    def on_message_complete(self) -> None:
        if self._parsing is not None:
            self._parsing.body.finish()
            self._parsing = None

    # -- running exchanges -----------------------------------------------------------------------------

    def _start(self, ex: Exchange) -> None:
        self._current = ex
        if self.fast is not None and self.fast(ex):
            ex.dispatched = True
            return
        self._task = self._loop.create_task(self._run(ex, self.handler))

    def hand_over(self, ex: Exchange, work: Handler) -> None:
        """A fast-path exchange continues as a task (retry, fly-replay): `work` answers it."""
        self._task = self._loop.create_task(self._run(ex, work))

    def done(self, ex: Exchange, now: float = 0.0) -> None:
        """A fast-path exchange is over: next request, or close. `now`: the caller's monotonic clock reading."""
        if self._current is ex:
            self._finish(ex, now)

    async def _run(self, ex: Exchange, work: Handler) -> None:
        ex.dispatched = True
        try:
            await work(ex)
        except HttpError as exc:
            if not ex.started:
                ex.respond_error(exc)
            else:
                ex.abort()
        except asyncio.CancelledError:
            ex.abort()
            raise
        except Exception:
            log.exception("handler failed")
            if not ex.started and not self.closed:
                ex.respond_error(HttpError(500, "PR99", "internal proxy error"))
            else:
                ex.abort()
        self._finish(ex)

    def _finish(self, ex: Exchange, now: float = 0.0) -> None:
        if not ex.finished:
            ex.abort()
        self._current = None
        self._task = None
        if self.closed or self._tunnel is not None:
            return
        if ex.close_after or not ex.body.done or self.draining or (self._eof and not self._pending):
            # A request body left unread cannot be skipped safely: close (RFC 9112 §9.6).
            self.close()
            return
        if self._pending:
            nxt = self._pending.popleft()
            self.set_paused("pipeline", len(self._pending) > 1)
            self._start(nxt)
        elif self._in_head:
            self._arm(self.limits.header_timeout)
        else:
            self._arm(self.idle_timeout, now)

    def _fail(self, exc: HttpError) -> None:
        """A broken request: answer it (if nothing is in flight) and close; never forward it."""
        log.debug("rejecting request: %s", exc)
        current = self._current
        if current is not None and not current.dispatched and self._task is not None:
            # The head parsed but the body broke in the same read: the handler never ran, nothing went out.
            self._task.cancel()
            self._current = self._task = None
        for ex in (self._parsing, *self._pending):
            if ex is not None:
                ex.body.fail(exc)  # a forwarder aborts its upstream: a truncated body never looks complete
        current = self._current
        if current is None or current.finished or not current.started:
            if current is not None:
                current.started = current.finished = True
                current.status = exc.status
                current.error_code = exc.code
            answer = self.rejection(exc)
            if answer is not None:
                self.write(answer)
            if self.on_reject is not None:
                self.on_reject(self, exc)
        self.close()

    def rejection(self, exc: HttpError) -> bytes | None:
        """What a refused request is answered with before the connection closes (None: close without a word).
        A subclass may answer in another server's manner (litefs_proxy answers as Go's net/http)."""
        status, headers, body = error_response(exc)
        headers = [*headers, (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        return h.serialize_response(status, headers) + body

    def request_method(self) -> bytes:
        """The method of the request whose head just ended; a subclass that showed the parser another method
        token (llhttp knows a fixed set) returns the client's own here."""
        return self.parser.get_method()

    # -- Upgrade ---------------------------------------------------------------------------------------

    def _begin_upgrade(self, rest: bytes) -> None:
        # Bytes after the head belong to the new protocol: held until the upstream accepted (101).
        if rest:
            self._tunnel_backlog.append(rest)
        self.set_paused("upgrade", True)

    def start_tunnel(self, ex: Exchange) -> None:
        self._tunnel = ex
        self._disarm()
        backlog, self._tunnel_backlog = self._tunnel_backlog, []
        for data in backlog:
            if ex._tunnel_sink is not None:
                ex._tunnel_sink(data)
        self.set_paused("upgrade", False)

    # -- plumbing ------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed and not self.closing:
            self.transport.write(data)

    async def drain(self) -> None:
        if not self._write_paused or self.closed:
            return
        fut = self._loop.create_future()
        self._drain_waiters.append(fut)
        await fut

    def _wake_drain(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def set_paused(self, reason: str, paused: bool) -> None:
        if not paused and not self._paused:
            return  # the common call: resuming what was never paused
        before = bool(self._paused)
        if paused:
            self._paused.add(reason)
        else:
            self._paused.discard(reason)
        after = bool(self._paused)
        if self.transport is None or self.closed or before == after:
            return
        with contextlib.suppress(RuntimeError):
            if after:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def _body_pressure(self, paused: bool) -> None:
        self.set_paused("body", paused)

    def _arm(self, delay: float, now: float = 0.0) -> None:
        # A deadline checked by the loop's sweeper instead of a timer per request: two float stores on the
        # hot path instead of a call_later + cancel (timeouts fire within SWEEP seconds of their due time).
        self._deadline = (now or time.monotonic()) + delay
        if not self._swept:
            self._swept = True
            sweeper(self._loop).add(self)

    def _disarm(self) -> None:
        self._deadline = 0.0

    def _check_body(self, now: float) -> None:
        """Cut a request whose body stopped arriving (slow-loris uploads) unless we are the ones not reading."""
        ex = self._parsing
        if ex is None or ex.body.done or self._paused or not self._body_seen:
            return
        if now - self._body_seen > self.limits.body_timeout:
            ex.body.fail(BodyError("request body timed out"))
            self.abort()

    def _timeout(self) -> None:
        self._deadline = 0.0
        if self._current is not None or self.closed:
            return
        if self._in_head:
            self._fail(HttpError(408, "PH03", "timed out reading the request head"))
        else:
            self.close()  # idle keep-alive connection: close silently (RFC 9112 §9.8)

    def close(self) -> None:
        if self.transport is not None and not self.closed and not self.closing:
            self.closing = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.closing = True
            self.transport.abort()

    @property
    def awaiting_first_head(self) -> bool:
        """A new connection still inside `first_head_timeout` with no request head complete (idle or trickling):
        the deadline from the accept is still the one armed (a request in flight or done re-arms or clears it)."""
        return self._first_deadline != 0.0 and self._deadline == self._first_deadline

    @property
    def idle(self) -> bool:
        return self._current is None and not self._in_head and self._tunnel is None and self.flight is None

    def start_drain(self) -> None:
        """Graceful shutdown: idle connections close now, busy ones after their current response."""
        self.draining = True
        if self.idle:
            self.close()
