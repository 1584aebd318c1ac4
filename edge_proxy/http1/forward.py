"""The streaming forwarder: one request from an `Exchange` to an upstream connection and the response back.

Bodies stream both ways chunk by chunk (re-framed when needed, RFC 9112 §6-7) with back-pressure in both
directions; a copy of the request body is kept up to `BodyTee.limit` so the request can be retried or
replayed. `on_head` sees the response head before anything reaches the client and may rewrite its headers
or return False to discard the response (fly-replay, or a LiteFS redirect).

    tee = BodyTee(ex, limit=1 << 20)
    result = await forward(ex, pool, ("::1", 8080), headers, tee, on_head=lambda head: True)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge_proxy.errors import HttpError, UpstreamError
from edge_proxy.http1 import head as h
from edge_proxy.http1.client import Key, UpstreamConnection, UpstreamPool
from edge_proxy.http1.server import Exchange

#: Framing fields set by the forwarder itself (RFC 9112 §6): never copied across.
FRAMING = frozenset({b"content-length", b"transfer-encoding"})
#: The forwarder answers `Expect: 100-continue` itself (RFC 9110 §10.1.1), so it is not sent on.
REQUEST_OWN = FRAMING | {b"expect"}
_RESPONSE_DROP = h.HOP_BY_HOP | FRAMING
#: Largest Content-Length held back whole for a retriable exchange (see `_Flow.hold`).
HOLD_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    first_byte: float = 60.0  # request sent -> response head received


@dataclass
class ForwardResult:
    status: int
    head: h.ResponseHead | None
    discarded: bool  # on_head returned False: nothing was sent to the client
    reused: bool
    connect_time: float
    upstream: Key


class BodyTee:
    """The request body as far as it was read, kept while it stays within `limit` bytes."""

    def __init__(self, ex: Exchange, limit: int) -> None:
        self.ex = ex
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.overflow = False
        self.consumed = False  # some of the body went to an upstream

    def keep(self, data: bytes) -> None:
        if self.overflow:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.overflow = True
            self.parts = []
        else:
            self.parts.append(data)

    @property
    def complete(self) -> bool:
        return self.ex.body.done and self.ex.body.error is None

    @property
    def replayable(self) -> bool:
        """Whole body in hand (or none at all): can be sent again."""
        return not self.overflow and (self.complete or not self.ex.head.has_body)

    async def fill(self) -> bool:
        """Read the rest of the body into the copy; False if it does not fit (or the client left)."""
        body = self.ex.body
        body.detach()
        try:
            while not self.overflow and (data := await body.read()):
                self.keep(data)
        except Exception:
            return False
        return self.replayable

    def data(self) -> bytes:
        return b"".join(self.parts)


class _Flow:
    """ResponseSink for one forwarded request. Subclasses say what happens when the head arrives
    (`_head_ready`/`_head_failed`) and when the exchange ends (`_ended`/`_end_failed`)."""

    __slots__ = ("chunked_out", "conn", "discard", "end_pending", "ex", "first_byte", "head", "head_pending",
                 "held", "hold", "holding", "loop", "on_head", "out", "request_sent", "tee", "timer")

    def __init__(self, ex: Exchange, conn: UpstreamConnection, on_head: Callable[[h.ResponseHead], bool]) -> None:
        self.ex = ex
        self.conn = conn
        self.on_head = on_head
        # The connection's loop, not asyncio.get_running_loop(): on 3.11 that costs a getpid() syscall.
        self.loop = ex.conn._loop
        self.head: h.ResponseHead | None = None
        self.head_pending = True  # neither a head nor a failure reported yet
        self.end_pending = True
        self.discard = False
        self.request_sent = False
        self.chunked_out = False
        self.first_byte = 0.0
        self.timer: asyncio.TimerHandle | None = None
        # Holding a response back (RFC 9110 §9.2.2: an idempotent request may be retried after a failure, but
        # only while the client has seen nothing of the response, spec rule 5). A machine that dies mid-response
        # (SIGKILL: its socket resets, RFC 9293 §3.6.1) would otherwise cost the client a cut connection.
        # `hold`: the largest Content-Length to hold, 0 for none (set by whoever knows the exchange is
        # retriable); `holding`: a head is in `head`/`out` and body bytes in `held`, nothing sent yet.
        self.hold = 0
        self.holding = False
        self.held = b""
        self.out: h.Headers = []
        self.tee: BodyTee | None = None

    def _accept(self, head: h.ResponseHead) -> bool:
        return self.on_head(head)

    def _head_ready(self, head: h.ResponseHead) -> None:
        raise NotImplementedError

    def _head_failed(self, exc: BaseException) -> None:
        raise NotImplementedError

    def _ended(self) -> None:
        raise NotImplementedError

    def _end_failed(self, exc: UpstreamError) -> None:
        raise NotImplementedError

    def _held_failed(self, exc: UpstreamError) -> None:
        """The upstream failed while the response was held: nothing reached the client, retry it."""
        raise NotImplementedError

    def _holdable(self, head: h.ResponseHead) -> bool:
        """Hold `head` and its body? Small and framed (a close-delimited body ends with the connection, so a
        reset cannot be told from the end), and the request can be sent again: no body or all of it in hand."""
        if head.framing == "length":
            if head.content_length > self.hold:
                return False
        elif head.framing != "chunked":
            return False
        body = self.ex.body
        return body.done and body.error is None and (self.tee is None or not self.tee.overflow)

    def _open(self) -> None:
        """Send the held head (deferred: it goes out with the first body bytes)."""
        head = self.head
        assert head is not None
        self.ex.start(head.status, self.out, length=head.content_length if head.framing == "length" else None,
                      reason=head.reason, defer=True)

    def _release(self) -> None:
        """Stop holding: the head and what body there is go to the client, the rest streams."""
        self.holding = False
        self._open()
        self.ex.on_client_writable(self._client_writable)
        held, self.held = self.held, b""
        self.response_data(held)

    # -- ResponseSink -------------------------------------------------------------------------------

    def response_head(self, head: h.ResponseHead) -> None:
        self.head = head
        if self.ex.finished:
            pass  # the client connection answered this exchange itself (a broken request followed it): drop it
        elif not self._accept(head):
            self.discard = True
        elif head.status == 101:
            self._start_tunnel(head)
        else:
            named = h.connection_tokens(head.headers)
            drop = _RESPONSE_DROP | named if named else _RESPONSE_DROP
            headers = [(k, v) for k, v in head.headers if k not in drop]
            no_body = head.framing == "none"
            if no_body:
                cl = head.header(b"content-length")
                if cl is not None and head.status not in (204, 304) and head.status >= 200:
                    headers.append((b"content-length", cl))  # HEAD keeps the length it would have had
            if self.hold and self._holdable(head):
                self.out = headers
                self.holding = True
            else:
                length = head.content_length if head.framing == "length" else None
                self.ex.start(head.status, headers, length=length, no_body=no_body, reason=head.reason, defer=True)
                self.ex.on_client_writable(self._client_writable)
        if self.head_pending:
            self.head_pending = False
            self._head_ready(head)

    def response_data(self, data: bytes) -> None:
        if self.holding:
            self.held = self.held + data if self.held else data  # one read (the common case): no copy
        elif not self.discard:
            self.ex.write(data)

    def response_end(self) -> None:
        if self.holding:  # complete: the head and the whole body in one write
            self.holding = False
            self._open()
            held, self.held = self.held, b""
            self.response_data(held)
        if not self.discard:
            self.ex.end()
        self.ex.on_client_writable(None)
        if self.end_pending:
            self.end_pending = False
            self._ended()

    def upstream_lost(self, exc: BaseException) -> None:
        self.ex.on_client_writable(None)
        if self.head is not None and self.head.framing == "close" and not self.conn.tunnel:
            self.response_end()  # a close-delimited body ends with the connection (RFC 9112 §6.3 rule 8)
            return
        if self.conn.tunnel:
            self.ex.conn.close()
            self.ex.finished = True
        if self.holding:
            self.holding = False
            self.held = b""
            self.end_pending = False
            self._held_failed(UpstreamError(f"upstream closed mid-response: {exc}", sent=True))
            return
        if self.head_pending:
            self.head_pending = False
            self._head_failed(UpstreamError(f"upstream closed: {exc}", sent=self.request_sent))
        elif self.head is not None and self.end_pending:  # the end is waited for only after a head
            self.end_pending = False
            self._end_failed(UpstreamError(f"upstream closed mid-response: {exc}", sent=True))

    def upstream_writable(self, writable: bool) -> None:
        self.ex.pause_client(not writable)

    def tunnel_data(self, data: bytes) -> None:
        self.ex.write_raw(data)

    def flush(self) -> None:
        """The end of one upstream read."""
        if self.holding:
            if self.head is not None and self.head.framing == "chunked":
                # A chunked body that did not end in the read its head came in may be a stream (server-sent
                # events, long polling): its first bytes must not wait for the rest.
                self._release()
                self.ex.flush()
        elif not self.discard:
            self.ex.flush()

    def arm(self, first_byte: float, body_pending: bool) -> None:
        """The first-byte clock starts once the whole request went out (a long upload is not a slow machine)."""
        self.first_byte = first_byte
        if not body_pending:
            self.body_sent()

    def body_sent(self) -> None:
        if self.timer is None and self.first_byte and self.head_pending:
            self.timer = self.loop.call_later(self.first_byte, self.first_byte_timeout)

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def first_byte_timeout(self) -> None:
        if self.head_pending:
            self.head_pending = False
            self._head_failed(HttpError(504, "PR05", "no response from upstream in time"))

    # -- helpers ------------------------------------------------------------------------------------

    def _client_writable(self, writable: bool) -> None:
        self.conn.pause_reading(not writable)

    def _start_tunnel(self, head: h.ResponseHead) -> None:
        headers = [(k, v) for k, v in h.strip_hop_by_hop(head.headers) if k not in FRAMING]
        headers += [(b"connection", b"upgrade"), (b"upgrade", head.header(b"upgrade") or self.ex.head.upgrade)]
        self.ex.start(101, headers, length=None, no_body=True, reason=head.reason)
        self.ex.on_client_writable(self._client_writable)
        self.ex.tunnel(self.conn.write, self.conn.close)

    def send_body(self, tee: BodyTee) -> None:
        """Stream the request body to the upstream, keeping the copy in `tee`."""
        ex, conn = self.ex, self.conn
        chunked = self.chunked_out

        def on_data(data: bytes) -> None:
            tee.keep(data)
            conn.write(h.chunk(data) if chunked else data)

        def on_end(exc: BaseException | None) -> None:
            if exc is not None:
                conn.abort()  # a truncated body must not look complete upstream
                return
            if chunked:
                conn.write(h.LAST_CHUNK)
            self.body_sent()

        tee.consumed = True
        self.tee = tee
        ex.send_continue()
        ex.body.attach(on_data, on_end)


class _AwaitFlow(_Flow):
    """The flow `forward` awaits: head and end reported through two futures."""

    __slots__ = ("done_fut", "head_fut")

    def __init__(self, ex: Exchange, conn: UpstreamConnection, on_head: Callable[[h.ResponseHead], bool]) -> None:
        super().__init__(ex, conn, on_head)
        self.head_fut: asyncio.Future[h.ResponseHead] = self.loop.create_future()
        self.done_fut: asyncio.Future[None] = self.loop.create_future()

    def _head_ready(self, head: h.ResponseHead) -> None:
        self.head_fut.set_result(head)

    def _head_failed(self, exc: BaseException) -> None:
        self.head_fut.set_exception(exc)

    def _ended(self) -> None:
        self.done_fut.set_result(None)

    def _end_failed(self, exc: UpstreamError) -> None:
        self.done_fut.set_exception(exc)

    def _held_failed(self, exc: UpstreamError) -> None:
        exc.held = True
        self.done_fut.set_exception(exc)


def request_head_bytes(ex: Exchange, headers: h.Headers, body_length: int | None, chunked: bool) -> bytes:
    out = [(k, v) for k, v in headers if k not in REQUEST_OWN]
    if body_length is not None:
        if body_length or ex.head.method in (b"POST", b"PUT", b"PATCH"):
            out.append((b"content-length", str(body_length).encode()))
    elif chunked:
        out.append((b"transfer-encoding", b"chunked"))
    if ex.head.upgrade:
        out += [(b"connection", b"upgrade"), (b"upgrade", ex.head.upgrade)]
    return h.serialize_request(ex.head, out)


async def forward(ex: Exchange, pool: UpstreamPool, key: Key, headers: h.Headers, tee: BodyTee, *,
                  on_head: Callable[[h.ResponseHead], bool] = lambda head: True,
                  timeouts: Timeouts = Timeouts(), hold: int = 0) -> ForwardResult:
    """Send `ex`'s request (with `headers`, already rewritten, hop-by-hop removed) to `key`.

    Raises UpstreamError: `connect=True` when no connection could be made, `sent` when request bytes may
    have reached the upstream, `held` when a held response failed before any of it was sent (see
    `_Flow.hold`: a response up to `hold` bytes is held back whole). Once the response started, failures
    cut the client connection instead.
    """
    try:
        return await _forward(ex, pool, key, headers, tee, on_head, timeouts, hold)
    finally:
        ex.pause_client(False)  # a pause from this upstream's full send buffer must not outlive the exchange
        ex.on_client_writable(None)


async def _forward(ex: Exchange, pool: UpstreamPool, key: Key, headers: h.Headers, tee: BodyTee,
                   on_head: Callable[[h.ResponseHead], bool], timeouts: Timeouts, hold: int) -> ForwardResult:
    pooled = pool.take_idle(key)  # the common case, without a coroutine round trip
    if pooled is not None:
        conn, reused, connect_time = pooled, True, 0.0
    else:
        started = time.monotonic()
        conn, reused = await pool.acquire(key, timeouts.connect)
        connect_time = time.monotonic() - started
    flow = _AwaitFlow(ex, conn, on_head)
    flow.hold = hold
    conn.begin(flow, ex.head.method)
    if tee.consumed:  # a retry or a replay: the body is all in the copy
        body = tee.data()
        conn.write(request_head_bytes(ex, headers, len(body), False) + body)
    elif not ex.head.has_body:
        conn.write(request_head_bytes(ex, headers, 0, False))
    else:
        flow.chunked_out = ex.head.framing == "chunked"
        length = ex.head.content_length if ex.head.framing == "length" else None
        conn.write(request_head_bytes(ex, headers, length, flow.chunked_out))
        flow.send_body(tee)
    flow.request_sent = True
    flow.arm(timeouts.first_byte, body_pending=not ex.body.done and not tee.consumed and ex.head.has_body)
    try:
        head = await flow.head_fut
    except HttpError:
        conn.abort()
        raise
    except UpstreamError as exc:
        if reused and not conn.responded:
            exc.stale = True
        conn.abort()
        raise
    finally:
        flow.cancel_timer()
    try:
        await flow.done_fut
    except UpstreamError as exc:
        if exc.held:
            conn.abort()
            raise
        if flow.discard:
            conn.abort()
        elif not ex.finished:
            ex.abort()
        return ForwardResult(head.status, head, flow.discard, reused, connect_time, key)
    if not ex.body.done or ex.body.error is not None:
        conn.reusable = False  # the upstream answered before the whole request body went out
    if conn.tunnel:
        conn.close()
    else:
        pool.release(conn)
    return ForwardResult(head.status, head, flow.discard, reused, connect_time, key)
