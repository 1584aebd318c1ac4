"""The client-facing HTTP/1.1 server as LiteFS's users know it: Go's net/http (LiteFS's proxy is an
`http.Server`, http/proxy_server.go:111-113), on edge_proxy's `ServerConnection`.

Where Go's server and edge_proxy's differ, a LiteFS user sees Go's:

- any token is a method (`FOO`, `get`): llhttp knows a fixed set, so an unknown token at the start of a request
  is shown to the parser as `POST` and the client's own is restored in the head (`request_method`). A request
  pipelined behind another in the same read is found after llhttp refuses it (`_Parser`): a throwaway parser
  locates where the completed requests end, and parsing starts afresh there. (Only when that read began at a
  request's start; otherwise an unknown method pipelined mid-read is still a 400.)
- limits: the head may be 1 MB + 4 KiB (Go's DefaultMaxHeaderBytes plus its read slop), any number of fields;
  beyond that Go's `431 Request Header Fields Too Large`.
- refusals are Go's plain text (`400 Bad Request`, no Content-Length, `Connection: close`), never edge_proxy's
  coded `fly-proxy-error` bodies; a head that times out unfinished is closed without a word (Go treats it as
  a network read error).
- header names are Go's canonical form (`textproto.CanonicalMIMEHeaderKey`): `x-multi` -> `X-Multi`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from array import array

import httptools

from edge_proxy.errors import HttpError
from edge_proxy.http1 import ServerConnection, ServerLimits
from edge_proxy.http1 import head as h

#: Go: DefaultMaxHeaderBytes (1 << 20) plus the 4096 bytes of slop its reader allows (net/http server.go).
GO_MAX_HEAD = (1 << 20) + 4096
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_ERROR_HEADERS = b"\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
_STAND_IN = b"POST"  # what llhttp is shown in place of a method it does not know
_KNOWN: dict[bytes, bool] = {}
_CANONICAL: dict[bytes, bytes] = {}


def go_limits(read_header_timeout: float, idle_timeout: float, read_timeout: float) -> ServerLimits:
    """Go's http.Server limits: ReadHeaderTimeout and IdleTimeout fall back to ReadTimeout, and to none at all
    when that is 0 too; no timeout on a silent request body except ReadTimeout (which the proxy applies)."""
    forever = float("inf")
    return ServerLimits(max_head_bytes=GO_MAX_HEAD, max_headers=1 << 20,
                        header_timeout=read_header_timeout or read_timeout or forever,
                        idle_timeout=idle_timeout or read_timeout or forever, body_timeout=forever)


def go_rejection(exc: HttpError) -> bytes | None:
    """What Go's server writes for a request it cannot read (net/http server.go, `c.readRequest` errors)."""
    if exc.status == 408:
        return None  # a read timeout is a "common net read error": no reply
    if exc.status == 431 or exc.status == 413:
        line = b"431 Request Header Fields Too Large"
        return b"HTTP/1.1 " + line + _ERROR_HEADERS + line
    if exc.status == 501:
        return b"HTTP/1.1 501 Not Implemented" + _ERROR_HEADERS + b"Unsupported transfer encoding"
    reason = _GO_REASONS.get(exc.detail)
    if reason is not None:  # Go's statusError: the reason in the status line and the body
        line = b"400 Bad Request: " + reason
        return b"HTTP/1.1 " + line + _ERROR_HEADERS + line
    return b"HTTP/1.1 400 Bad Request" + _ERROR_HEADERS + b"400 Bad Request"


#: edge_proxy's refusals that Go's server words itself (net/http server.go readRequest: badRequestError).
_GO_REASONS = {
    "missing Host header": b"missing required Host header",
    "more than one Host header": b"too many Host headers",
    "invalid Host header": b"malformed Host header",
}


def canonical(name: bytes) -> bytes:
    """Go's textproto.CanonicalMIMEHeaderKey: `x-multi` -> `X-Multi`; a name that is not a token is kept."""
    out = _CANONICAL.get(name)
    if out is None:
        if _TOKEN.fullmatch(name):
            out = b"-".join(part[:1].upper() + part[1:].lower() for part in name.split(b"-"))
        else:
            out = name
        if len(_CANONICAL) < 4096:
            _CANONICAL[name] = out
    return out


def canonical_headers(headers: h.Headers) -> h.Headers:
    return [(canonical(k), v) for k, v in headers]


def llhttp_knows(method: bytes) -> bool:
    """Does llhttp accept `method` on an HTTP/1.1 request line? (Asked of llhttp itself, once per token.)"""
    known = _KNOWN.get(method)
    if known is None:
        probe = httptools.HttpRequestParser(_Ignore())
        try:
            probe.feed_data(method + b" / HTTP/1.1\r\nHost: a\r\n\r\n")
            known = True
        except httptools.HttpParserUpgrade:
            known = True  # CONNECT
        except httptools.HttpParserError:
            known = False
        if len(_KNOWN) < 256:
            _KNOWN[method] = known
    return known


class _Ignore:
    pass


class _Count:
    def __init__(self) -> None:
        self.complete = 0

    def on_message_complete(self) -> None:
        self.complete += 1


def _requests_end(data: bytes, count: int) -> int:
    """Where the first `count` whole requests in `data` end (data begins at a request's start)."""
    lo, hi = 1, len(data)
    while lo < hi:  # the smallest prefix holding `count` complete requests (monotonic in the prefix length)
        mid = (lo + hi) // 2
        counter = _Count()
        with contextlib.suppress(httptools.HttpParserError):
            httptools.HttpRequestParser(counter).feed_data(data[:mid])
        if counter.complete >= count:
            hi = mid
        else:
            lo = mid + 1
    return lo


class _Parser(httptools.HttpRequestParser):
    """llhttp for a `GoServerConnection`: an unknown method in a request pipelined behind others in one read
    makes llhttp fail after those requests were parsed; parsing resumes on a fresh parser where they end."""

    def __init__(self, conn: GoServerConnection) -> None:
        super().__init__(conn)
        self.conn = conn

    def feed_data(self, data: bytes | bytearray | memoryview | array[int]) -> None:
        conn = self.conn
        from_start = conn._at_start
        done_before = conn._completed
        try:
            super().feed_data(data)
        except httptools.HttpParserInvalidMethodError:
            completed = conn._completed - done_before
            if not from_start or completed == 0:
                raise
            whole = bytes(data)
            rest = whole[_requests_end(whole, completed):]
            conn.parser = fresh = _Parser(conn)
            conn._at_start = True  # llhttp began (and refused) the request there: it begins again
            rest = conn._stand_in(rest)
            if rest:
                fresh.feed_data(rest)


class GoServerConnection(ServerConnection):
    """edge_proxy's server connection with Go's leniency and Go's refusals (see the module docstring)."""

    framing_names = (b"Content-Length", b"Transfer-Encoding", b"Connection")
    _at_start = True  # the next byte begins a request (nothing of one is in the parser)
    _held = b""  # the start of a request whose method token has not ended yet
    _method: bytes | None = None  # the client's method, when the parser was shown another
    _upgraded = False  # an Upgrade request went by: what follows may be another protocol's bytes
    _completed = 0  # requests parsed to their end

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.parser = _Parser(self)
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._at_start and not self._upgraded:
            if self._held:
                data, self._held = self._held + data, b""
            data = self._stand_in(data)
            if not data:
                return
        super().data_received(data)

    def _stand_in(self, data: bytes) -> bytes:
        start = len(data) - len(data.lstrip(b"\r\n"))  # Go and llhttp both skip empty lines before a request
        end = data.find(b" ", start)
        if end == -1:
            rest = data[start:]
            if rest and len(rest) < 64 and _TOKEN.fullmatch(rest):
                self._held = data  # the method may go on in the next read
                return b""
            return data
        method = data[start:end]
        if _TOKEN.fullmatch(method) and not llhttp_knows(method):
            self._method = method
            return data[:start] + _STAND_IN + data[end:]
        return data

    def on_message_begin(self) -> None:
        self._at_start = False
        super().on_message_begin()

    def on_message_complete(self) -> None:
        self._at_start = True
        self._completed += 1
        super().on_message_complete()

    def on_headers_complete(self) -> None:
        if self.parser.should_upgrade():
            self._upgraded = True
        super().on_headers_complete()

    def request_method(self) -> bytes:
        method, self._method = self._method, None
        return method if method is not None else super().request_method()

    def rejection(self, exc: HttpError) -> bytes | None:
        return go_rejection(exc)


__all__ = ["GO_MAX_HEAD", "GoServerConnection", "canonical", "canonical_headers", "go_limits", "go_rejection",
           "llhttp_knows"]
