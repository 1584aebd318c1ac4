"""HTTP/2 from clients (RFC 9113) over TLS when ALPN picks `h2`, on the sans-I/O `h2` library.

Each stream becomes an `H2Exchange`, the same interface the HTTP/1.1 `Exchange` gives handlers, so the proxy
handler and the forwarder are unchanged; upstream stays HTTP/1.1. Response bodies respect the client's flow
control windows: while a stream's window is shut its upstream is paused (the forwarder's writable listener).
Request bodies are acknowledged as they arrive; a full body buffer pauses the whole connection.
Not supported: server push, extended CONNECT (WebSocket over HTTP/2), trailers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error
from hyperframe.frame import GoAwayFrame

from edge_proxy.errors import HttpError
from edge_proxy.http1 import head as h
from edge_proxy.http1.body import BodyError
from edge_proxy.http1.exchange import Exchange, ServerLimits
from edge_proxy.http1.server import Handler, ServerConnection, log

#: Connection-specific fields HTTP/2 forbids (RFC 9113 §8.2.2), besides the hop-by-hop ones.
_H2_DROP = h.HOP_BY_HOP | {b"host"}


class H2Exchange(Exchange):
    """One HTTP/2 stream seen as an exchange."""

    def __init__(self, conn: H2Server, head: h.RequestHead, stream_id: int) -> None:
        super().__init__(conn, head)
        self.h2 = conn
        self.stream_id = stream_id
        self.pending = bytearray()
        self.end_pending = False
        self.listener: Callable[[bool], None] | None = None
        self.blocked = False
        self.reset = False
        self.handler_done = False

    def start(self, status: int, headers: h.Headers, *, length: int | None, no_body: bool = False,
              reason: bytes = b"", defer: bool = False) -> None:
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        self.status = status
        out = [(b":status", str(status).encode())]
        out += [(k, v) for k, v in headers if k not in _H2_DROP]
        if length is not None and not no_body:
            out.append((b"content-length", str(length).encode()))
        self.h2.send_headers(self, out)

    def flush(self) -> None:
        return None  # frames go out when the connection flushes after each event batch

    def write(self, data: bytes) -> None:
        if data:
            self._write(data)

    def _write(self, data: bytes) -> None:
        self.sent_bytes += len(data)
        self.pending += data
        self.h2.pump(self)

    def end(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.end_pending = True
        self.h2.pump(self)

    def abort(self) -> None:
        self.finished = True
        self.h2.reset_stream(self)

    def send_continue(self) -> None:
        return None  # HTTP/2 clients send bodies without waiting; Expect is not forwarded

    def on_client_writable(self, listener: Callable[[bool], None] | None) -> None:
        self.listener = listener

    def pause_client(self, paused: bool) -> None:
        self.h2.set_paused(f"stream{self.stream_id}", paused)

    def tunnel(self, on_data: Callable[[bytes], None], on_close: Callable[[], None]) -> None:
        raise HttpError(501, "PH06", "Upgrade is not available over HTTP/2")

    @property
    def client_gone(self) -> bool:
        return self.h2.closed or self.reset


class H2Server(ServerConnection):
    """The client connection after ALPN chose h2. Reuses ServerConnection's plumbing (limits, pauses, drain
    bookkeeping, on_open/on_close) and replaces its HTTP/1.1 parsing."""

    def __init__(self, handler: Handler, limits: ServerLimits, *, scheme: str = "https",
                 on_open: Callable[[ServerConnection], None] | None = None,
                 on_close: Callable[[ServerConnection], None] | None = None) -> None:
        super().__init__(handler, limits, scheme=scheme, on_open=on_open, on_close=on_close)
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.streams: dict[int, H2Exchange] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    # -- asyncio.Protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.conn.initiate_connection()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        for ex in list(self.streams.values()):
            ex.reset = True
            ex.body.fail(BodyError("client closed the connection"))
            if ex.listener is not None:
                ex.listener(True)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except H2Error as exc:
            log.debug("h2 protocol error: %s", exc)
            self._flush()
            self.close()
            return
        for event in events:
            self._event(event, events)
        self._flush()

    def eof_received(self) -> bool | None:
        return None

    def resume_writing(self) -> None:
        super().resume_writing()
        for ex in list(self.streams.values()):
            self.pump(ex)
        self._flush()

    # -- events ----------------------------------------------------------------------------------------

    def _event(self, event: Event, batch: list[Event]) -> None:
        if isinstance(event, RequestReceived):
            ended = any(isinstance(e, StreamEnded) and e.stream_id == event.stream_id for e in batch)
            self._request(event.stream_id, cast(list[tuple[bytes, bytes]], event.headers or []), ended)
        elif isinstance(event, DataReceived):
            assert event.stream_id is not None
            with contextlib.suppress(H2Error):
                self.conn.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
            ex = self.streams.get(event.stream_id)
            if ex is not None and event.data:
                self._body_seen = time.monotonic()
                ex.body.feed(event.data)
        elif isinstance(event, StreamEnded):
            ex = self.streams.get(event.stream_id or 0)
            if ex is not None:
                ex.body.finish()
        elif isinstance(event, StreamReset):
            ex = self.streams.get(event.stream_id or 0)
            if ex is not None:
                ex.reset = True
                ex.pending.clear()
                ex.end_pending = False
                ex.body.fail(BodyError("stream reset by the client"))
                if ex.listener is not None:
                    ex.listener(True)
                if ex.handler_done:
                    self._forget(ex)
        elif isinstance(event, WindowUpdated):
            targets = list(self.streams.values()) if not event.stream_id else \
                [s for s in (self.streams.get(event.stream_id),) if s is not None]
            for ex in targets:
                self.pump(ex)
        elif isinstance(event, ConnectionTerminated):
            self.close()

    def _request(self, stream_id: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        self._first_deadline = 0.0  # a request came: no longer a new connection waiting for its first one
        pseudo = {k: v for k, v in headers if k.startswith(b":")}
        regular = [(k.lower(), v) for k, v in headers if not k.startswith(b":")]
        cookies = [v for k, v in regular if k == b"cookie"]
        if len(cookies) > 1:  # RFC 9113 §8.2.3: crumbs are joined for HTTP/1.1
            regular = [(k, v) for k, v in regular if k != b"cookie"] + [(b"cookie", b"; ".join(cookies))]
        authority = pseudo.get(b":authority") or h.get(regular, b"host") or b""
        if authority and h.get(regular, b"host") is None:
            regular.insert(0, (b"host", authority))
        framing: h.Framing = "none"
        length = 0
        if not ended:
            cl = h.get(regular, b"content-length")
            framing, length = ("length", int(cl)) if cl is not None and cl.isdigit() else ("chunked", 0)
        head = h.RequestHead(method=pseudo.get(b":method", b"GET"), target=pseudo.get(b":path", b"/"),
                             version=b"1.1", headers=regular, framing=framing, content_length=length)
        ex = H2Exchange(self, head, stream_id)
        self.streams[stream_id] = ex
        try:
            h.validate_request(head, self.limits.max_headers)
        except HttpError as exc:
            ex.respond_error(exc)
            self.streams.pop(stream_id, None)
            return
        if ended:
            ex.body.finish()
        task = self._loop.create_task(self._run_stream(ex))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run_stream(self, ex: H2Exchange) -> None:
        await self._run(ex, self.handler)

    def _finish(self, ex: Exchange, now: float = 0.0) -> None:
        """Called by ServerConnection._run after the handler. The stream lives on while response bytes still
        wait for the client's window; it is forgotten once its last frame went out (or it was reset)."""
        assert isinstance(ex, H2Exchange)
        if not ex.finished:
            ex.abort()
        ex.handler_done = True
        if ex.reset or (not ex.pending and not ex.end_pending):
            self._forget(ex)
        self._flush()

    def _forget(self, ex: H2Exchange) -> None:
        self.streams.pop(ex.stream_id, None)
        if self.streams:
            return
        if self.draining:
            self.close()
        else:
            self._arm(self.idle_timeout)

    def _timeout(self) -> None:
        self._deadline = 0.0
        if not self.streams:
            with contextlib.suppress(H2Error):
                self.conn.close_connection()
            self._flush()
            self.close()

    # -- sending ---------------------------------------------------------------------------------------

    def send_headers(self, ex: H2Exchange, headers: list[tuple[bytes, bytes]]) -> None:
        if ex.reset or self.closed:
            return
        try:
            self.conn.send_headers(ex.stream_id, headers)
        except H2Error as exc:
            log.debug("h2 send_headers: %s", exc)
            self.reset_stream(ex)
        self._flush()

    def pump(self, ex: H2Exchange) -> None:
        """Send what the stream's and the connection's windows allow; pause its producer when they shut."""
        if ex.reset or self.closed:
            ex.pending.clear()
            return
        conn = self.conn
        try:
            while ex.pending:
                window = min(conn.local_flow_control_window(ex.stream_id), conn.max_outbound_frame_size)
                if window <= 0:
                    break
                chunk = bytes(ex.pending[:window])
                del ex.pending[:window]
                conn.send_data(ex.stream_id, chunk)
            if not ex.pending and ex.end_pending:
                ex.end_pending = False
                conn.end_stream(ex.stream_id)
                if ex.handler_done:
                    self._forget(ex)
        except H2Error as exc:
            log.debug("h2 send: %s", exc)
            self.reset_stream(ex)
            return
        blocked = bool(ex.pending) or self._write_paused
        if blocked != ex.blocked:
            ex.blocked = blocked
            if ex.listener is not None:
                ex.listener(not blocked)
        self._flush()

    def reset_stream(self, ex: H2Exchange) -> None:
        if ex.reset:
            return
        ex.reset = True
        ex.pending.clear()
        ex.end_pending = False
        if ex.handler_done:
            self._forget(ex)
        with contextlib.suppress(H2Error):
            self.conn.reset_stream(ex.stream_id)
        self._flush()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.write(data)

    # -- drain -----------------------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return not self.streams

    def start_drain(self) -> None:
        """GOAWAY (RFC 9113 §6.8): no new streams; close once the open ones finish.

        h2's close_connection() would also stop the open streams, so the graceful GOAWAY is written as a raw
        frame and the h2 state machine keeps running until the last stream ends.
        """
        self.draining = True
        goaway = GoAwayFrame(0)
        goaway.last_stream_id = max(self.streams, default=0)
        goaway.error_code = 0  # NO_ERROR
        self._flush()
        self.write(goaway.serialize())
        if not self.streams:
            self.close()


class AlpnDispatch(asyncio.Protocol):
    """Picks HTTP/2 or HTTP/1.1 once the TLS handshake has chosen (RFC 7301), then delegates everything."""

    def __init__(self, h1: Callable[[], ServerConnection], h2: Callable[[], ServerConnection]) -> None:
        self.h1 = h1
        self.h2 = h2
        self.inner: ServerConnection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sslobj: Any = transport.get_extra_info("ssl_object")
        chosen = sslobj.selected_alpn_protocol() if sslobj is not None else None
        self.inner = self.h2() if chosen == "h2" else self.h1()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()
