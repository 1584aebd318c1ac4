"""Recognizers of the edge's "simple" HTTP/1.1 messages, the lane that skips the per-header parser callbacks.

`scan_request` accepts exactly one bodyless GET/HEAD head, `rewrite_response` exactly one complete
Content-Length response, each in a strict subset of RFC 9112 that llhttp parses the same way; anything else
returns None and goes to the general path (which applies the full rules). Pure functions; the C module
`edge_proxy.http1._simple` has the same semantics and is used when built (unless SIXPN_NO_C is set).

The Python versions validate a whole head with one compiled regex and then walk its field lines with
`finditer`: this is the fallback on the hot path, so no byte-by-byte loop.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable

from edge_proxy import fields

# RFC 9110 §5.6.2 tchar. RFC 9112 §5.1: no whitespace between the field name and the colon.
_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
# field-value bytes with the OWS around them: HTAB, SP, VCHAR, obs-text; no CR, LF, NUL, other controls or DEL.
_VALUE = rb"[\t\x20-\x7e\x80-\xff]"
# One field line (RFC 9112 §5). A line starting with SP/HTAB (obs-fold, §5.2) cannot match: it is no tchar.
_FIELD = rb"(?:" + _TCHAR + rb"+:" + _VALUE + rb"*\r\n)"
_FIELD_RE = re.compile(rb"(" + _TCHAR + rb"+):(" + _VALUE + rb"*)\r\n")

# RFC 9112 §3: request-line = method SP request-target SP HTTP-version CRLF; origin-form target only, then the
# field lines and the empty line ending the head, which must also end `data` (no body, nothing pipelined).
_REQUEST_RE = re.compile(rb"(GET|HEAD) /[\x21-\x7e]* HTTP/1\.1\r\n(" + _FIELD + rb"+)\r\n")
# RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ] CRLF. The body follows the head.
_RESPONSE_RE = re.compile(rb"HTTP/1\.1 ([0-9]{3}) [\t\x20-\x7e\x80-\xff]*\r\n(" + _FIELD + rb"+)\r\n")
# RFC 9110 §7.2 Host = uri-host [ ":" port ]: an IP-literal or a reg-name, and at most 5 port digits.
_HOST_RE = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]*)(:[0-9]{1,5})?")
_DIGITS_RE = re.compile(rb"[0-9]{1,15}")

# What the lane does with a request field (a body, a protocol switch, a hop that is not ours, a field the edge sets
# or reads: REJECT), from the edge's one table of fields; names are matched lower-cased and with `_` read as `-`.
_REQUEST_KINDS = fields.LANE_REQUEST
_REQUEST_REFUSED_PREFIXES = fields.LANE_PREFIXES
# Response fields that mean another framing (§6.3), a protocol switch, a replay or a hop; the caller adds its own.
_RESPONSE_REFUSED = frozenset({b"transfer-encoding", b"upgrade", b"te", b"trailer", b"via", b"fly-replay"})
_RESPONSE_DROPPED = frozenset({b"server", b"fly-request-id", b"keep-alive"})
_MAX_RESPONSE_FIELDS = 100
_OWS = b" \t"


def scan_request_py(data: bytes, max_headers: int) -> tuple[bytes, bytes, bytes] | None:
    """(method, host, kept) if `data` is exactly one simple request head, else None. `kept` is `data` without
    its final CRLF and without the hop-by-hop `Connection: keep-alive` / `Keep-Alive` lines."""
    m = _REQUEST_RE.fullmatch(data)
    if m is None:
        return None
    block_start, block_end = m.span(2)
    if data.count(b"\n", block_start, block_end) > max_headers:  # every LF in the block ends a field line
        return None
    host: bytes | None = None
    dropped: list[tuple[int, int]] = []
    for f in _FIELD_RE.finditer(data, block_start, block_end):
        name = f[1].lower().replace(b"_", b"-")
        kind = _REQUEST_KINDS.get(name, fields.KEEP)
        if kind == fields.KEEP:
            if name.startswith(_REQUEST_REFUSED_PREFIXES):
                return None
        elif kind == fields.HOST:
            if host is not None:
                return None
            host = f[2].strip(_OWS)
            if not host or _HOST_RE.fullmatch(host) is None:
                return None
        elif kind == fields.CONNECTION:
            if f[2].strip(_OWS).lower() != b"keep-alive":
                return None
            dropped.append(f.span())
        elif kind == fields.DROP:
            dropped.append(f.span())
        else:
            return None
    if host is None:
        return None
    return m[1], host, _without(data, dropped, len(data) - 2)


def rewrite_response_py(data: bytes, tail: bytes) -> tuple[int, bytes] | None:
    """(status, out) if `data` is exactly one complete simple response, else None. `out` is the response with
    the Server, Fly-Request-Id and keep-alive lines removed and `tail` (field lines) added at the end of the head."""
    m = _RESPONSE_RE.match(data)
    if m is None:
        return None
    status = int(m[1])
    if not 200 <= status <= 599 or status in (204, 304):  # §6.3: 1xx, 204, 304 have no content
        return None
    block_start, block_end = m.span(2)
    if data.count(b"\n", block_start, block_end) > _MAX_RESPONSE_FIELDS:
        return None
    length: int | None = None
    dropped: list[tuple[int, int]] = []
    for f in _FIELD_RE.finditer(data, block_start, block_end):
        name = f[1].lower()
        if name == b"content-length":  # §6.3: exactly one, plain digits (no list, sign or OWS inside)
            value = f[2].strip(_OWS)
            if length is not None or _DIGITS_RE.fullmatch(value) is None:
                return None
            length = int(value)
        elif name == b"connection":
            if f[2].strip(_OWS).lower() != b"keep-alive":
                return None
            dropped.append(f.span())
        elif name in _RESPONSE_DROPPED:
            dropped.append(f.span())
        elif name in _RESPONSE_REFUSED or name.startswith(b"proxy-"):
            return None
    if length is None or len(data) - m.end() != length:  # §6.3: the body is exactly Content-Length bytes
        return None
    return status, _without(data, dropped, block_end) + tail + data[block_end:]


def _without(data: bytes, spans: list[tuple[int, int]], end: int) -> bytes:
    """data[:end] minus the given (ascending, inside data[:end]) spans."""
    if not spans:
        return data[:end]
    parts = []
    pos = 0
    for start, stop in spans:
        parts.append(data[pos:start])
        pos = stop
    parts.append(data[pos:end])
    return b"".join(parts)


# The C module is looked up by name rather than imported so that this file type-checks with or without the build.
scan_request: Callable[[bytes, int], tuple[bytes, bytes, bytes] | None] = scan_request_py
rewrite_response: Callable[[bytes, bytes], tuple[int, bytes] | None] = rewrite_response_py
ACCELERATED = False
if not os.environ.get("SIXPN_NO_C"):
    try:
        _c = importlib.import_module("edge_proxy.http1._simple")  # C version, same semantics
    except ImportError:
        pass
    else:
        scan_request, rewrite_response, ACCELERATED = _c.scan_request, _c.rewrite_response, True
