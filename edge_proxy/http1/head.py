"""Request/response heads, the framing rules of RFC 9112 and hop-by-hop handling (RFC 9110 §7.6.1).

Header names are kept lower-cased (HTTP field names are case-insensitive, RFC 9110 §5.1); values are the
raw bytes. Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

import contextlib
import re
import socket
from dataclasses import dataclass, field
from typing import Literal

from edge_proxy.errors import HttpError

Headers = list[tuple[bytes, bytes]]
Framing = Literal["none", "length", "chunked", "close"]

#: RFC 9110 §7.6.1 plus the de-facto ones every proxy strips.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
    b"proxy-authenticate", b"proxy-authorization",
})
#: httptools' version strings -> the bytes kept in heads (no encode per message).
VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}
#: Connection header values naming only fields that are hop-by-hop anyway: no token parsing needed. (Not
#: `close`: it names a field `close`, which must then be dropped too.)
PLAIN_CONNECTION = frozenset({b"keep-alive", b"Keep-Alive", b"upgrade", b"Upgrade"})
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HOST = re.compile(rb"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]*)(:[0-9]{1,5})?$")

REASONS = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created", 204: "No Content",
    301: "Moved Permanently", 302: "Found", 304: "Not Modified", 400: "Bad Request", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large",
    421: "Misdirected Request", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
    505: "HTTP Version Not Supported", 508: "Loop Detected",
}


def get(headers: Headers, name: bytes) -> bytes | None:
    """The first value of `name` (lower-case), or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


def get_all(headers: Headers, name: bytes) -> list[bytes]:
    return [value for key, value in headers if key == name]


def remove(headers: Headers, names: frozenset[bytes] | set[bytes]) -> Headers:
    return [(k, v) for k, v in headers if k not in names]


def tokens(value: bytes) -> set[bytes]:
    """Comma-separated tokens of a list header, lower-cased (`Connection: keep-alive, Upgrade`)."""
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def connection_tokens(headers: Headers) -> set[bytes]:
    found: set[bytes] = set()
    for key, value in headers:
        if key == b"connection":
            found |= tokens(value)
    return found


def strip_hop_by_hop(headers: Headers) -> Headers:
    """Drop RFC 9110 §7.6.1 hop-by-hop fields and every field the Connection header names."""
    extra = connection_tokens(headers)
    drop = HOP_BY_HOP | extra if extra else HOP_BY_HOP
    return [(k, v) for k, v in headers if k not in drop]


@dataclass
class RequestHead:
    method: bytes
    target: bytes
    version: bytes  # b"1.1" or b"1.0"
    headers: Headers
    framing: Framing = "none"
    content_length: int = 0
    keep_alive: bool = True
    upgrade: bytes = b""  # the Upgrade protocol when the client asked for one (RFC 9110 §7.8)
    expect_continue: bool = False
    host: bytes = b""

    @property
    def idempotent(self) -> bool:
        return self.method in IDEMPOTENT

    @property
    def has_body(self) -> bool:
        return self.framing in ("length", "chunked") and not (self.framing == "length" and self.content_length == 0)

    def header(self, name: bytes) -> bytes | None:
        return get(self.headers, name)


@dataclass
class ResponseHead:
    status: int
    headers: Headers
    reason: bytes = b""
    version: bytes = b"1.1"
    framing: Framing = "none"
    content_length: int = 0
    keep_alive: bool = True
    extra: dict[str, object] = field(default_factory=dict)

    def header(self, name: bytes) -> bytes | None:
        return get(self.headers, name)


def request_framing(headers: Headers, version: bytes) -> tuple[Framing, int]:
    """How a request body is delimited (RFC 9112 §6.3); ambiguity is a 400, never forwarded.

    llhttp already refuses most smuggling shapes; this re-checks them on the parsed fields so the rule
    holds whatever parser leniency is set.
    """
    te = get_all(headers, b"transfer-encoding")
    cl = get_all(headers, b"content-length")
    if te:
        if cl:  # §6.1: a sender MUST NOT send both; a proxy must not forward such a message.
            raise HttpError(400, "PH01", "both Content-Length and Transfer-Encoding")
        if version == b"1.0":  # §6.1: Transfer-Encoding in HTTP/1.0 is a sign of smuggling.
            raise HttpError(400, "PH01", "Transfer-Encoding in an HTTP/1.0 request")
        codings = [t.strip().lower() for v in te for t in v.split(b",")]
        if codings != [b"chunked"]:  # §6.3 rule 4: chunked must be last; we accept chunked alone.
            raise HttpError(501 if codings and codings[-1] == b"chunked" else 400, "PH01",
                            "unsupported Transfer-Encoding")
        return "chunked", 0
    if cl:
        if len(cl) > 1 or not cl[0].isdigit() or len(cl[0]) > 18:  # §6.3 rule 5: duplicates and lists refused
            raise HttpError(400, "PH01", "invalid or duplicate Content-Length")
        length = int(cl[0])
        return ("length", length) if length else ("none", 0)
    return "none", 0


def response_framing(status: int, headers: Headers, request_method: bytes) -> tuple[Framing, int]:
    """How a response body is delimited (RFC 9112 §6.3 rules 1-7)."""
    if request_method == b"HEAD" or status < 200 or status in (204, 304):
        return "none", 0
    te: bytes | None = None
    cl: bytes | None = None
    conflict = False
    for key, value in headers:  # one pass: this runs for every response
        if key == b"content-length":
            if cl is None:
                cl = value
            elif value != cl:
                conflict = True
        elif key == b"transfer-encoding" and te is None:
            te = value
    if te is not None:
        return ("chunked", 0) if te.lower().rstrip().endswith(b"chunked") else ("close", 0)
    if cl is not None:
        if conflict or not cl.strip().isdigit():
            raise HttpError(502, "PR06", "upstream sent an invalid Content-Length")
        return "length", int(cl.strip())
    return "close", 0


def validate_request(head: RequestHead, max_headers: int = 100) -> None:
    """The checks llhttp leaves to the application: Host (RFC 9112 §3.2), CONNECT, header count."""
    if len(head.headers) > max_headers:
        raise HttpError(431, "PH02", "too many header fields")
    hosts = get_all(head.headers, b"host")
    if len(hosts) > 1:
        raise HttpError(400, "PH01", "more than one Host header")
    if not hosts and head.version != b"1.0":
        raise HttpError(400, "PH01", "missing Host header")
    host = hosts[0].strip() if hosts else b""
    if host and host not in _GOOD_HOSTS:
        if not _HOST.match(host):
            raise HttpError(400, "PH01", "invalid Host header")
        _remember(_GOOD_HOSTS, host)
    head.host = host
    if head.method == b"CONNECT":
        raise HttpError(405, "PH05", "CONNECT is not supported")
    if not head.target.startswith(b"/"):
        if head.target == b"*" and head.method == b"OPTIONS":
            return
        # absolute-form (RFC 9112 §3.2.2): accept, taking the authority as Host. The received Host field is
        # ignored and replaced, so what the request is routed by is what the machine sees as its Host.
        if head.target.lower().startswith((b"http://", b"https://")):
            rest = head.target.split(b"://", 1)[1]
            authority, _, path = rest.partition(b"/")
            if not authority or not _HOST.match(authority):
                raise HttpError(400, "PH01", "invalid authority in the request target")
            head.host = authority
            head.target = b"/" + path
            head.headers[:] = [(b"host", authority), *((k, v) for k, v in head.headers if k != b"host")]
            return
        raise HttpError(400, "PH01", "invalid request target")
    for name, _ in head.headers:
        if name not in _GOOD_NAMES:
            if not _TOKEN.match(name):
                raise HttpError(400, "PH01", "invalid header name")
            _remember(_GOOD_NAMES, name)


#: Header names / Host values that passed their regex (bounded): requests repeat the same few dozen, and a set
#: lookup is cheaper than a regex match per field per request.
_GOOD_NAMES: set[bytes] = set()
_GOOD_HOSTS: set[bytes] = set()


def _remember(book: set[bytes], value: bytes) -> None:
    if len(book) < 4096:
        book.add(value)


def host_name(host: bytes) -> str:
    """`Web.Example.com:8080` -> `web.example.com`; `[::1]:80` -> `::1`."""
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:].split("]", 1)[0]
    return text.rsplit(":", 1)[0] if ":" in text else text.rstrip(".")


def serialize_request(head: RequestHead, headers: Headers) -> bytes:
    """Request line + headers, as sent upstream (always HTTP/1.1, RFC 9110 §6.2 'highest minor')."""
    parts = [head.method, b" ", head.target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        parts += [name, b": ", value, b"\r\n"]
    parts.append(b"\r\n")
    return b"".join(parts)


def serialize_response(status: int, headers: Headers, reason: bytes = b"", version: bytes = b"1.1") -> bytes:
    if not reason:
        reason = REASONS.get(status, "Unknown").encode()
    parts = [b"HTTP/", version, b" ", str(status).encode(), b" ", reason, b"\r\n"]
    for name, value in headers:
        parts += [name, b": ", value, b"\r\n"]
    parts.append(b"\r\n")
    return b"".join(parts)


def chunk(data: bytes) -> bytes:
    """One chunk of the chunked transfer coding (RFC 9112 §7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def set_nodelay(transport: object) -> None:
    """Disable Nagle: a response head and its body go out in separate writes, and Nagle plus delayed ACKs
    would hold the second one back ~40 ms (RFC 896 / RFC 1122 §4.2.3.2)."""
    get = getattr(transport, "get_extra_info", None)
    sock = get("socket") if get is not None else None
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
