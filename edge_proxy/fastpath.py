"""The edge's fast path: a keep-alive request without a body, routed to a pooled upstream connection, driven
by Protocol callbacks from head to end (no task, no future, no coroutine per request).

`EdgeProxy.fast` builds the upstream request head in one pass on bytes and hands it to a `Relay`, the
response sink that streams the answer back (the same `_Flow` machinery `forward` uses). Whatever the fast path
does not cover is passed on, before anything was sent, to the general `EdgeProxy.handle`; a first attempt that
needs more (a retry after a dead pooled connection, a fly-replay, an upstream timeout) continues there as a
task from a `Pending` that carries this attempt's outcome, so both paths share one set of rules.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from edge_proxy.errors import UpstreamError
from edge_proxy.http1 import head as h
from edge_proxy.http1.client import UpstreamConnection
from edge_proxy.http1.forward import FRAMING, ForwardResult, _Flow
from edge_proxy.http1.server import Exchange
from edge_proxy.table import AppRoute, MachineRoute

if TYPE_CHECKING:
    from edge_proxy.proxy import EdgeProxy


#: Response fields the relay drops, merges (Via) or hands to the general rules (fly-replay, Connection).
_RESPONSE_SPECIAL = h.HOP_BY_HOP | FRAMING | {b"server", b"fly-request-id", b"via", b"fly-replay"}
#: Fields the edge adds to a response: a Connection header naming one of them takes the general rules.
_RESPONSE_ADDED = frozenset({b"server", b"via", b"fly-request-id"})


def _keep(head: h.ResponseHead) -> bool:
    return True


class Pending:
    """A fast-path attempt handed to the general path: its ids and clock, and how the attempt ended."""

    __slots__ = ("app", "error", "info", "machine", "request_id", "result", "started")

    def __init__(self, relay: Relay, result: ForwardResult | None, error: BaseException | None) -> None:
        self.app: AppRoute = relay.app
        self.machine: MachineRoute = relay.machine
        self.request_id: str = relay.request_id
        self.info = relay.info
        self.started = relay.started
        self.result = result
        self.error = error

    def outcome(self) -> ForwardResult:
        """What `EdgeProxy._forward` would have returned or raised for this attempt."""
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class Relay(_Flow):
    """ResponseSink of one fast-path request: streams the response, then accounts for it and ends the exchange."""

    __slots__ = ("app", "info", "machine", "proxy", "request_id", "rid", "started")

    def __init__(self, proxy: EdgeProxy, ex: Exchange, conn: UpstreamConnection, app: AppRoute,
                 machine: MachineRoute, request_id: str, rid: bytes, info: dict[str, object], started: float) -> None:
        super().__init__(ex, conn, _keep)
        self.proxy = proxy
        self.app = app
        self.machine = machine
        self.request_id = request_id
        self.rid = rid
        self.info = info
        self.started = started

    def _accept(self, resp: h.ResponseHead) -> bool:
        # Overridden rather than passed as on_head: a bound method stored on self is a reference cycle,
        # left for the cyclic GC once per request.
        return self.proxy.response_headers(resp, self.rid)

    def response_head(self, head: h.ResponseHead) -> None:
        """`_Flow.response_head` + `EdgeProxy.response_headers` in one pass, straight to bytes, for a response
        with a body; anything else (fly-replay, 101, bodiless) takes the general code."""
        if head.framing == "none" or head.status == 101 or self.ex.finished:
            super().response_head(head)
            return
        fields = self._fields(head, _RESPONSE_SPECIAL, False)
        if fields is None:
            super().response_head(head)
            return
        self.head = head
        ex = self.ex
        ex.start_prepared(head.status, head.reason, fields,
                          head.content_length if head.framing == "length" else None)
        ex.on_client_writable(self._client_writable)
        if self.head_pending:
            self.head_pending = False
            self._head_ready(head)

    def _fields(self, head: h.ResponseHead, special: frozenset[bytes], named: bool) -> bytes | None:
        parts: list[bytes] = []
        via = b""
        for k, v in head.headers:
            if k in special:
                if k == b"via":
                    via = via + b", " + v if via else v
                elif k == b"fly-replay":
                    return None
                elif k == b"connection" and not named and v not in h.PLAIN_CONNECTION:
                    extra = h.connection_tokens(head.headers) - special  # `keep-alive`, `close`: dropped anyway
                    if extra & _RESPONSE_ADDED:
                        return None
                    if extra:
                        return self._fields(head, special | extra, True)
                continue
            parts += [k, b": ", v, b"\r\n"]
        proxy = self.proxy
        parts += [b"server: ", proxy.server_name, b"\r\nvia: ", via + b", " + proxy.via if via else proxy.via,
                  b"\r\nfly-request-id: ", self.rid, b"\r\n"]
        return b"".join(parts)

    def response_data(self, data: bytes) -> None:
        if not self.discard:
            ex = self.ex
            if ex._chunked:
                ex.write(data)
            elif data:
                ex._write(data)  # Content-Length framing: `write` minus a call

    # The first-byte clock on the client connection's sweeper instead of a timer per request.
    def body_sent(self) -> None:
        if self.first_byte and self.head_pending:
            conn = self.ex.conn
            conn.first_byte_at = self.started + self.first_byte  # sent in the same callback it started in
            conn.first_byte_late = self.first_byte_timeout

    def cancel_timer(self) -> None:
        conn = self.ex.conn
        conn.first_byte_at = 0.0
        conn.first_byte_late = None

    # -- how the attempt ends -------------------------------------------------------------------------

    def _head_ready(self, head: h.ResponseHead) -> None:
        self.cancel_timer()

    def _head_failed(self, exc: BaseException) -> None:
        self.cancel_timer()
        if isinstance(exc, UpstreamError) and not self.conn.responded:
            exc.stale = True  # a pooled connection the machine had closed (see `forward`)
        self.conn.abort()
        self._settle()
        self._escalate(None, exc)

    def _ended(self) -> None:
        ex, conn = self.ex, self.conn
        if not ex.body.done or ex.body.error is not None:
            conn.reusable = False
        now = time.monotonic()  # one clock read for the pool, the metrics and the keep-alive timeout
        if conn.tunnel:
            conn.close()
        else:
            self.proxy.pool.release(conn, now)
        self._done(now)

    def _end_failed(self, exc: UpstreamError) -> None:
        if self.discard:
            self.conn.abort()
        elif not self.ex.finished:
            self.ex.abort()
        self._done(time.monotonic())

    def _done(self, now: float) -> None:
        self._settle()
        head = self.head
        assert head is not None
        if self.discard:  # fly-replay: the general path replays it
            self._escalate(ForwardResult(head.status, head, True, True, 0.0, self.conn.key), None)
            return
        self.info["status"] = head.status
        ex = self.ex
        self.proxy.finish(ex, self.request_id, self.info, self.started, now)
        ex.conn.done(ex, now)

    def _settle(self) -> None:
        """What `forward` and `EdgeProxy._forward` undo after every attempt."""
        ex = self.ex
        ex.pause_client(False)
        ex.on_client_writable(None)
        self.proxy.load.add(self.proxy.load.requests, self.machine.id, -1)

    def _escalate(self, result: ForwardResult | None, error: BaseException | None) -> None:
        pending = Pending(self, result, error)
        proxy = self.proxy

        async def carry_on(ex: Exchange) -> None:
            await proxy.handle(ex, pending)

        self.ex.conn.hand_over(self.ex, carry_on)

