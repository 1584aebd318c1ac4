"""One request and its response on a client connection: what a handler reads and answers with.

`ServerLimits` bounds a client connection; `error_response` is the body/headers of a coded proxy error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge_proxy.errors import HttpError
from edge_proxy.http1 import head as h
from edge_proxy.http1.body import Body

if TYPE_CHECKING:
    from edge_proxy.http1.server import ServerConnection


@dataclass(frozen=True)
class ServerLimits:
    max_head_bytes: int = 32 * 1024  # request line + headers; beyond it: 431 (RFC 6585 §5)
    max_headers: int = 100
    header_timeout: float = 10.0  # from the first byte of a request to the end of its head
    idle_timeout: float = 60.0  # keep-alive wait for the next request
    # A new connection's first request head must be complete this many seconds after the accept, however its
    # bytes trickle in (Slowloris: connections opened and held idle or half-sent); None: idle_timeout, then
    # header_timeout from the first byte, as for later requests.
    first_head_timeout: float | None = None
    body_high_water: int = 256 * 1024  # request body bytes held before reading pauses
    body_timeout: float = 60.0  # longest silence inside a request body before the connection is cut
    write_high_water: int = 256 * 1024  # response bytes queued before the producer is paused


def error_response(exc: HttpError, extra: h.Headers | None = None) -> tuple[int, h.Headers, bytes]:
    body = f"{exc.status} {exc.code}: {exc.detail}\n".encode()
    headers: h.Headers = [(b"content-type", b"text/plain; charset=utf-8"),
                          (b"fly-proxy-error", exc.code.encode()), *(extra or [])]
    return exc.status, headers, body


class Exchange:
    """One request and its response on a client connection."""

    def __init__(self, conn: ServerConnection, head: h.RequestHead) -> None:
        self.conn = conn
        self.head = head
        self.body = Body(conn._body_pressure, conn.limits.body_high_water)
        self.started = False  # response head sent
        self.finished = False  # response complete
        self.status = 0
        self.sent_bytes = 0
        self.close_after = not head.keep_alive
        self.error_code = ""
        self.dispatched = False  # the handler has started running
        self.state: dict[str, Any] = {}
        self._chunked = False
        self._held = b""
        self._tunnel_sink: Callable[[bytes], None] | None = None
        self._tunnel_close: Callable[[], None] | None = None

    # -- what a handler reads --------------------------------------------------------------------

    @property
    def client_addr(self) -> tuple[str, int]:
        return self.conn.peer

    @property
    def local_port(self) -> int:
        return self.conn.local_port

    @property
    def scheme(self) -> str:
        return self.conn.scheme

    @property
    def client_gone(self) -> bool:
        return self.conn.closed

    # -- responding -------------------------------------------------------------------------------

    def respond(self, status: int, headers: h.Headers, body: bytes = b"", *, code: str = "") -> None:
        """A complete response with a Content-Length."""
        if code:
            self.error_code = code
        no_body = self.head.method == b"HEAD" or status in (204, 304) or status < 200
        self.start(status, [*headers, (self.conn.framing_names[0], str(len(body)).encode())], length=len(body),
                   no_body=True, defer=True)
        if body and not no_body:
            self._write(body)
        self.end()

    def respond_error(self, exc: HttpError, extra: h.Headers | None = None) -> None:
        status, headers, body = error_response(exc, extra)
        self.respond(status, headers, body, code=exc.code)

    def send_continue(self) -> None:
        """`100 Continue` (RFC 9110 §10.1.1) when the client asked and no response started yet."""
        if self.head.expect_continue and not self.started and not self.body.received:
            self.head.expect_continue = False
            self.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def start(self, status: int, headers: h.Headers, *, length: int | None, no_body: bool = False,
              reason: bytes = b"", defer: bool = False) -> None:
        """Send the response head. `headers` carry no framing fields unless `no_body`; `length` None means
        unknown: chunked to an HTTP/1.1 client, close-delimited to HTTP/1.0 (RFC 9112 §6.3)."""
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        self.status = status
        out = headers
        length_name, te_name, connection_name = self.conn.framing_names
        if status == 101:
            self.close_after = True
        elif not no_body:
            if length is not None:
                out = [*out, (length_name, str(length).encode())]
            elif self.head.version == b"1.1":
                self._chunked = True
                out = [*out, (te_name, b"chunked")]
            else:
                self.close_after = True
        if self.conn.draining:
            self.close_after = True
        if status != 101:
            if self.close_after:
                out = [*out, (connection_name, b"close")]
            elif self.head.version == b"1.0":
                out = [*out, (connection_name, b"keep-alive")]
        head = h.serialize_response(status, out, reason)
        if defer:
            self._held = head  # sent with the first body bytes or by flush(): one write for small responses
        else:
            self.conn.write(head)

    def start_prepared(self, status: int, reason: bytes, fields: bytes, length: int | None) -> None:
        """`start(status, headers, length=length, reason=reason, defer=True)` for a response with a body whose
        fields are already serialized (`name: value\\r\\n` each): the same bytes, without a list per field."""
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        self.status = status
        if length is not None:
            tail = b"content-length: %d\r\n" % length
        elif self.head.version == b"1.1":
            self._chunked = True
            tail = b"transfer-encoding: chunked\r\n"
        else:
            self.close_after = True
            tail = b""
        if self.conn.draining:
            self.close_after = True
        if self.close_after:
            tail += b"connection: close\r\n"
        elif self.head.version == b"1.0":
            tail += b"connection: keep-alive\r\n"
        if not reason:
            reason = h.REASONS.get(status, "Unknown").encode()
        self._held = b"HTTP/1.1 %d %b\r\n%b%b\r\n" % (status, reason, fields, tail)

    def flush(self) -> None:
        """Send a response head held back by `start(defer=True)`."""
        if self._held:
            held, self._held = self._held, b""
            self.conn.write(held)

    def write(self, data: bytes) -> None:
        if data:
            self._write(h.chunk(data) if self._chunked else data)

    def _write(self, data: bytes) -> None:
        self.sent_bytes += len(data)
        if self._held:
            data, self._held = self._held + data, b""
        self.conn.write(data)

    def end(self) -> None:
        if self.finished:
            return
        if self._chunked:
            self._write(h.LAST_CHUNK)
        else:
            self.flush()
        self.finished = True

    def abort(self) -> None:
        """Cut the connection: the response cannot be completed correctly."""
        self.finished = True
        self.close_after = True
        self.conn.abort()

    async def drain(self) -> None:
        await self.conn.drain()

    def on_client_writable(self, listener: Callable[[bool], None] | None) -> None:
        """`listener(False)` when the client's send buffer is full, `listener(True)` when it drained."""
        self.conn.write_listener = listener

    # -- Upgrade tunnelling (RFC 9110 §7.8) ------------------------------------------------------------

    def tunnel(self, on_data: Callable[[bytes], None], on_close: Callable[[], None]) -> None:
        """After a 101 was sent: raw client bytes go to `on_data`; `write_raw` sends raw bytes back."""
        self._tunnel_sink, self._tunnel_close = on_data, on_close
        self.finished = True  # the HTTP exchange is over; the connection now belongs to the tunnel
        self.conn.start_tunnel(self)

    def write_raw(self, data: bytes) -> None:
        self.sent_bytes += len(data)
        self.conn.write(data)

    def pause_client(self, paused: bool) -> None:
        """Stop/start reading the client socket (back-pressure from a slow upstream)."""
        self.conn.set_paused("upstream", paused)
