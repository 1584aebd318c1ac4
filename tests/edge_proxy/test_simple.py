"""The simple-message recognizers (edge_proxy.http1.simple): examples of every rule, differential tests against
httptools (llhttp, an independent parser) and, when the C module is built, C against the Python reference."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_proxy.http1 import simple

ScanFn = Callable[[bytes, int], "tuple[bytes, bytes, bytes] | None"]
RewriteFn = Callable[[bytes, bytes], "tuple[int, bytes] | None"]


@dataclass(frozen=True)
class Impl:
    scan_request: ScanFn
    rewrite_response: RewriteFn


def _c_module() -> Any:
    return pytest.importorskip("edge_proxy.http1._simple")


@pytest.fixture(scope="module", params=["py", "c"])
def impl(request: pytest.FixtureRequest) -> Impl:
    if request.param == "c":
        c = _c_module()
        return Impl(c.scan_request, c.rewrite_response)
    return Impl(simple.scan_request_py, simple.rewrite_response_py)


# Hypothesis runs are bounded and derandomized so the suite is quick and CI sees the same examples every time.
FAST = settings(max_examples=400, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

WRK = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
CURL = b"GET /path?q=1 HTTP/1.1\r\nHost: web.sixpn.test:8080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
BROWSER = (b"GET /index.html HTTP/1.1\r\nHost: web.sixpn.test\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n"
           b"Accept: text/html,application/xhtml+xml;q=0.9,*/*;q=0.8\r\nAccept-Language: en-US,en;q=0.5\r\n"
           b"Accept-Encoding: gzip, deflate, br\r\nConnection: keep-alive\r\nCookie: a=1; b=\xc3\xa9\r\n"
           b"Upgrade-Insecure-Requests: 1\r\nKeep-Alive: timeout=5\r\n\r\n")
NGINX = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 07:00:00 GMT\r\n"
         b"Content-Type: text/html\r\nContent-Length: 5\r\nLast-Modified: Wed, 25 Nov 2026 10:00:00 GMT\r\n"
         b"Connection: keep-alive\r\nETag: \"6565a3c0-5\"\r\nAccept-Ranges: bytes\r\n\r\nhello")
TAIL = b"fly-request-id: 01ABC-gru\r\nvia: 1.1 fly.io\r\n"


# --- requests: examples -------------------------------------------------------------------------------------

def test_accepts_wrk_curl_and_browser_requests(impl: Impl) -> None:
    assert impl.scan_request(WRK, 100) == (b"GET", b"a", WRK[:-2])
    assert impl.scan_request(CURL, 100) == (b"GET", b"web.sixpn.test:8080", CURL[:-2])
    kept = BROWSER[:-2].replace(b"Connection: keep-alive\r\n", b"").replace(b"Keep-Alive: timeout=5\r\n", b"")
    assert impl.scan_request(BROWSER, 100) == (b"GET", b"web.sixpn.test", kept)
    assert b"keep-alive" not in kept.lower()


@pytest.mark.parametrize(("data", "host"), [
    (b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", b"a"),
    (b"GET / HTTP/1.1\r\nhOsT:  \t WeB.Example \t \r\n\r\n", b"WeB.Example"),  # name case-insensitive, OWS trimmed
    (b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", b"[::1]:8080"),
    (b"GET / HTTP/1.1\r\nHost: [fdaa:0:1::2]\r\n\r\n", b"[fdaa:0:1::2]"),
    (b"GET / HTTP/1.1\r\nHost: 192.0.2.1:80\r\n\r\n", b"192.0.2.1:80"),
    (b"GET / HTTP/1.1\r\nHost: a-b_c~d%20!$&'()*+,;=\r\n\r\n", b"a-b_c~d%20!$&'()*+,;="),
    (b"GET /a\"<>\\^`{|}?#x HTTP/1.1\r\nX-Empty:\r\nHost:a\r\nX-Obs: \x80\xff\t\r\n\r\n", b"a"),
], ids=["head", "case and OWS", "ipv6 port", "ipv6", "ipv4 port", "reg-name chars", "target and value bytes"])
def test_accepts_request_forms(impl: Impl, data: bytes, host: bytes) -> None:
    method = data.split(b" ", 1)[0]
    assert impl.scan_request(data, 100) == (method, host, data[:-2])


def test_drops_every_keep_alive_line_and_keeps_the_rest_in_order(impl: Impl) -> None:
    data = (b"GET / HTTP/1.1\r\nConnection: Keep-Alive \r\nX-1: a\r\nkeep-alive: 1\r\nHost: h\r\n"
            b"CONNECTION:keep-alive\r\nX-2: b\r\n\r\n")
    assert impl.scan_request(data, 100) == (b"GET", b"h", b"GET / HTTP/1.1\r\nX-1: a\r\nHost: h\r\nX-2: b\r\n")


def test_max_headers_counts_every_field_line(impl: Impl) -> None:
    data = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nConnection: keep-alive\r\n\r\n"
    assert impl.scan_request(data, 3) is not None
    assert impl.scan_request(data, 2) is None  # dropped lines count too
    assert impl.scan_request(WRK, 1) is not None
    assert impl.scan_request(WRK, 0) is None


REQUEST_REJECTS = {
    "post": b"POST / HTTP/1.1\r\nHost: a\r\n\r\n",
    "lowercase method": b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
    "options": b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    "two spaces": b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    "absolute form": b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
    "empty target": b"GET  HTTP/1.1\r\nHost: a\r\n\r\n",
    "space in target": b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
    "DEL in target": b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
    "obs-text in target": b"GET /\x80 HTTP/1.1\r\nHost: a\r\n\r\n",
    "http/1.0": b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
    "http/2": b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    "lowercase version": b"GET / http/1.1\r\nHost: a\r\n\r\n",
    "no fields": b"GET / HTTP/1.1\r\n\r\n",
    "missing host": b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
    "duplicate host": b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
    "empty host": b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
    "blank host": b"GET / HTTP/1.1\r\nHost:  \t \r\n\r\n",
    "space in host": b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    "slash in host": b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
    "userinfo in host": b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
    "unclosed literal": b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
    "empty port": b"GET / HTTP/1.1\r\nHost: a:\r\n\r\n",
    "long port": b"GET / HTTP/1.1\r\nHost: a:123456\r\n\r\n",
    "two ports": b"GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n",
    "obs-text host": b"GET / HTTP/1.1\r\nHost: \xc3\xa9\r\n\r\n",
    "connection close": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    "connection list": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x\r\n\r\n",
    "connection upgrade": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n\r\n",
    "obs-fold SP": b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n",
    "obs-fold HTAB": b"GET / HTTP/1.1\r\nX: b\r\n\tc\r\nHost: a\r\n\r\n",
    "bare LF everywhere": b"GET / HTTP/1.1\nHost: a\n\n",
    "bare LF line end": b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
    "bare LF at end": b"GET / HTTP/1.1\r\nHost: a\r\n\n",
    "bare CR in value": b"GET / HTTP/1.1\r\nHost: a\r\nX: b\rc\r\n\r\n",
    "NUL in value": b"GET / HTTP/1.1\r\nHost: a\r\nX: b\x00\r\n\r\n",
    "DEL in value": b"GET / HTTP/1.1\r\nHost: a\r\nX: b\x7f\r\n\r\n",
    "control in value": b"GET / HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n",
    "incomplete": b"GET / HTTP/1.1\r\nHost: a\r\n",
    "incomplete CR": b"GET / HTTP/1.1\r\nHost: a\r\n\r",
    "trailing bytes": WRK + b"x",
    "body": b"GET / HTTP/1.1\r\nHost: a\r\n\r\nhello",
    "pipelined": WRK + WRK,
    "leading CRLF": b"\r\n" + WRK,
    "empty name": b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n",
    "space before colon": b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    "tab before colon": b"GET / HTTP/1.1\r\nHost: a\r\nX\t: b\r\n\r\n",
    "no colon": b"GET / HTTP/1.1\r\nHost: a\r\nX b\r\n\r\n",
    "separator in name": b"GET / HTTP/1.1\r\nHost: a\r\nX(y): b\r\n\r\n",
    "obs-text in name": b"GET / HTTP/1.1\r\nHost: a\r\nX\xff: b\r\n\r\n",
}
REQUEST_SPECIAL_NAMES = [
    b"Content-Length: 0", b"Transfer-Encoding: chunked", b"Upgrade: websocket", b"Expect: 100-continue",
    b"TE: trailers", b"Trailer: x", b"Via: 1.1 x", b"Proxy-Authorization: x", b"Proxy-Connection: x", b"proxy-: x",
    b"X-Forwarded-For: 1.2.3.4", b"x-forwarded-proto: https", b"Fly-Replay: region=a", b"fly-force-instance-id: x",
    b"FLY-PREFER-REGION: gru",
]


@pytest.mark.parametrize("name", REQUEST_REJECTS)
def test_rejects_request(impl: Impl, name: str) -> None:
    assert impl.scan_request(REQUEST_REJECTS[name], 100) is None


@pytest.mark.parametrize("line", REQUEST_SPECIAL_NAMES, ids=lambda line: line.split(b":")[0].decode())
def test_rejects_request_with_special_field(impl: Impl, line: bytes) -> None:
    assert impl.scan_request(b"GET / HTTP/1.1\r\nHost: a\r\n" + line + b"\r\n\r\n", 100) is None
    # the same name as a prefix of a harmless one is fine (only the listed prefixes are refused)
    name = line.split(b":")[0]
    if not name.lower().endswith(b"-"):
        assert impl.scan_request(b"GET / HTTP/1.1\r\nHost: a\r\nX" + name + b": 1\r\n\r\n", 100) is not None


# --- responses: examples ------------------------------------------------------------------------------------

def test_rewrites_nginx_response(impl: Impl) -> None:
    out = (b"HTTP/1.1 200 OK\r\nDate: Thu, 26 Nov 2026 07:00:00 GMT\r\nContent-Type: text/html\r\nContent-Length: 5\r\n"
           b"Last-Modified: Wed, 25 Nov 2026 10:00:00 GMT\r\nETag: \"6565a3c0-5\"\r\nAccept-Ranges: bytes\r\n"
           + TAIL + b"\r\nhello")
    assert impl.rewrite_response(NGINX, TAIL) == (200, out)
    assert impl.rewrite_response(NGINX, b"") == (200, out.replace(TAIL, b""))


@pytest.mark.parametrize(("data", "status", "out"), [
    (b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", 200, b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n"),
    (b"HTTP/1.1 404 Not Found\r\ncontent-length:\t3 \t\r\nX: \xff\r\n\r\nabc", 404,
     b"HTTP/1.1 404 Not Found\r\ncontent-length:\t3 \t\r\nX: \xff\r\n\r\nabc"),
    (b"HTTP/1.1 599 \xe9\t!\r\nContent-Length: 007\r\n\r\n1234567", 599,
     b"HTTP/1.1 599 \xe9\t!\r\nContent-Length: 007\r\n\r\n1234567"),
    # dropped: Server, Fly-Request-Id, Keep-Alive, Connection: keep-alive (any case, OWS)
    (b"HTTP/1.1 500 E\r\nSERVER: x\r\nContent-Length: 2\r\nfly-request-id: 1\r\nKeep-Alive: timeout=5\r\n"
     b"connection:  KEEP-ALIVE \r\nX: 1\r\n\r\nhi", 500, b"HTTP/1.1 500 E\r\nContent-Length: 2\r\nX: 1\r\n\r\nhi"),
    # the body is opaque: CRLFs, a head, NUL
    (b"HTTP/1.1 201 Created\r\nContent-Length: 28\r\n\r\n\r\n\r\nHTTP/1.1 200 OK\r\n\r\n\x00\r\n\r\n", 201,
     b"HTTP/1.1 201 Created\r\nContent-Length: 28\r\n\r\n\r\n\r\nHTTP/1.1 200 OK\r\n\r\n\x00\r\n\r\n"),
])
def test_rewrites_response_forms(impl: Impl, data: bytes, status: int, out: bytes) -> None:
    assert impl.rewrite_response(data, b"") == (status, out)
    head, body = out.split(b"\r\n\r\n", 1)
    assert impl.rewrite_response(data, b"A: 1\r\n") == (status, head + b"\r\nA: 1\r\n\r\n" + body)


def test_response_field_limit_is_100(impl: Impl) -> None:
    def response(n: int) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" + b"X: 1\r\n" * (n - 1) + b"\r\n"
    assert impl.rewrite_response(response(100), b"") is not None
    assert impl.rewrite_response(response(101), b"") is None


def _resp(status_line: bytes, *lines: bytes, body: bytes = b"abc") -> bytes:
    return status_line + b"\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


CL3 = b"Content-Length: 3"
RESPONSE_REJECTS = {
    "partial body": NGINX[:-1],
    "extra bytes": NGINX + b"x",
    "two responses": NGINX + NGINX,
    "incomplete head": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n",
    "204": _resp(b"HTTP/1.1 204 No Content", b"Content-Length: 0", body=b""),
    "304": _resp(b"HTTP/1.1 304 Not Modified", b"Content-Length: 0", body=b""),
    "101": _resp(b"HTTP/1.1 101 Switching Protocols", b"Content-Length: 0", body=b""),
    "100": _resp(b"HTTP/1.1 100 Continue", b"Content-Length: 0", body=b""),
    "199": _resp(b"HTTP/1.1 199 X", CL3),
    "600": _resp(b"HTTP/1.1 600 X", CL3),
    "099": _resp(b"HTTP/1.1 099 X", CL3),
    "2 digits": _resp(b"HTTP/1.1 20 OK", CL3),
    "4 digits": _resp(b"HTTP/1.1 2000 OK", CL3),
    "no SP after status": _resp(b"HTTP/1.1 200", CL3),
    "http/1.0": _resp(b"HTTP/1.0 200 OK", CL3),
    "NUL in reason": _resp(b"HTTP/1.1 200 O\x00K", CL3),
    "DEL in reason": _resp(b"HTTP/1.1 200 O\x7fK", CL3),
    "chunked": _resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked", body=b"3\r\nabc\r\n0\r\n\r\n"),
    "chunked and length": _resp(b"HTTP/1.1 200 OK", CL3, b"Transfer-Encoding: chunked"),
    "no length": _resp(b"HTTP/1.1 200 OK", b"X: 1"),
    "two lengths": _resp(b"HTTP/1.1 200 OK", CL3, CL3),
    "length list": _resp(b"HTTP/1.1 200 OK", b"Content-Length: 3,3"),
    "length 1,1": _resp(b"HTTP/1.1 200 OK", b"Content-Length: 1,1", body=b"a"),
    "length +": _resp(b"HTTP/1.1 200 OK", b"Content-Length: +3"),
    "length -": _resp(b"HTTP/1.1 200 OK", b"Content-Length: -0", body=b""),
    "length hex": _resp(b"HTTP/1.1 200 OK", b"Content-Length: 0x3"),
    "length space inside": _resp(b"HTTP/1.1 200 OK", b"Content-Length: 1 2", body=b"a" * 12),
    "length empty": _resp(b"HTTP/1.1 200 OK", b"Content-Length: ", body=b""),
    "length 16 digits": _resp(b"HTTP/1.1 200 OK", b"Content-Length: 0000000000000003"),
    "length too big": _resp(b"HTTP/1.1 200 OK", b"Content-Length: 999999999999999"),
    "fly-replay": _resp(b"HTTP/1.1 200 OK", CL3, b"Fly-Replay: region=sjc"),
    "via": _resp(b"HTTP/1.1 200 OK", CL3, b"Via: 1.1 nginx"),
    "transfer-encoding identity": _resp(b"HTTP/1.1 200 OK", CL3, b"transfer-encoding: identity"),
    "upgrade": _resp(b"HTTP/1.1 200 OK", CL3, b"Upgrade: h2c"),
    "te": _resp(b"HTTP/1.1 200 OK", CL3, b"TE: trailers"),
    "trailer": _resp(b"HTTP/1.1 200 OK", CL3, b"Trailer: x"),
    "proxy-": _resp(b"HTTP/1.1 200 OK", CL3, b"Proxy-Authenticate: Basic"),
    "connection close": _resp(b"HTTP/1.1 200 OK", CL3, b"Connection: close"),
    "connection list": _resp(b"HTTP/1.1 200 OK", CL3, b"Connection: keep-alive, x"),
    "obs-fold": _resp(b"HTTP/1.1 200 OK", CL3, b"X: a", b" b"),
    "bare LF": b"HTTP/1.1 200 OK\nContent-Length: 3\n\nabc",
    "bare LF end of head": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\nabc",
    "NUL in value": _resp(b"HTTP/1.1 200 OK", CL3, b"X: \x00"),
    "space before colon": _resp(b"HTTP/1.1 200 OK", b"Content-Length : 3"),
    "empty name": _resp(b"HTTP/1.1 200 OK", CL3, b": x"),
}


@pytest.mark.parametrize("name", RESPONSE_REJECTS)
def test_rejects_response(impl: Impl, name: str) -> None:
    assert impl.rewrite_response(RESPONSE_REJECTS[name], TAIL) is None


def test_rejects_response_examples_are_minimal(impl: Impl) -> None:
    """The rejected examples differ from accepted ones only in the rule they break (so each checks its rule)."""
    assert impl.rewrite_response(_resp(b"HTTP/1.1 200 OK", CL3), b"") is not None
    assert impl.rewrite_response(_resp(b"HTTP/1.1 200 OK", CL3, b"X-Via: 1", b"Xproxy-a: 1", b"X-Fly-Replay: 1"),
                                 b"") is not None
    assert impl.rewrite_response(_resp(b"HTTP/1.1 200 OK", b"Content-Length: 000000000000003"), b"") is not None


# --- grammar for generated messages: mostly valid pieces, some invalid ones --------------------------------

TCHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
VALUE_BYTES = b"\t abcXYZ019:;,=/\"()[]\x21\x7e\x80\xc3\xa9\xff"
ANY_BYTES = VALUE_BYTES + b"\x00\x01\r\n\x7f\x1f"
Field = tuple[bytes, bytes, bytes]  # (the line, its name, its value without OWS)


def _pick(valid: list[bytes], invalid: list[bytes]) -> st.SearchStrategy[bytes]:
    """Valid choices four times as likely as invalid ones."""
    return st.sampled_from(valid * 4 + invalid)


def _over(alphabet: bytes, min_size: int, max_size: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=min_size, max_size=max_size).map(lambda b: bytes(alphabet[x % len(alphabet)] for x in b))


def _value(valid_only: bool) -> st.SearchStrategy[bytes]:
    valid = _over(VALUE_BYTES, 0, 12)
    return valid if valid_only else st.one_of(valid, valid, valid, _over(ANY_BYTES, 1, 6))


def _field(valid_only: bool, specials: list[bytes], values: list[bytes]) -> st.SearchStrategy[Field]:
    # random names are never "host": a valid-only message has exactly the Host lines it chose to add
    names = [st.sampled_from(specials), _over(TCHARS, 1, 10).filter(lambda n: n.lower() != b"host")]
    if not valid_only:
        names.append(st.sampled_from([b"", b"Host ", b" X", b"X y", b"x(", b"\xff", b"a\r", b"\tb"]))
    colon = st.just(b":") if valid_only else _pick([b":"], [b"", b" :", b"::"])
    eol = st.just(b"\r\n") if valid_only else _pick([b"\r\n"], [b"\n", b"\r", b"\r\n ", b"\r\n\t"])
    ows = st.sampled_from([b"", b" ", b" \t", b"\t"])
    parts = st.tuples(st.one_of(*names), colon, ows, st.one_of(st.sampled_from(values), _value(valid_only)), ows, eol)
    return parts.map(lambda p: (b"".join(p), p[0], (p[2] + p[3] + p[4]).strip(b" \t")))


REQUEST_NAMES = [b"Connection", b"Keep-Alive", b"Accept", b"Content-Length", b"Transfer-Encoding", b"Upgrade",
                 b"Expect", b"TE", b"Trailer", b"Via", b"Proxy-X", b"X-Forwarded-For", b"Fly-Region", b"Cookie"]
REQUEST_VALUES = [b"keep-alive", b"Keep-Alive", b"close", b"a", b"web.sixpn.test:8080", b"[::1]:80", b"a b", b"0"]
HOSTS = [b"a", b"web.sixpn.test", b"WEB.sixpn.test:80", b"[fdaa::2]:8080", b"192.0.2.1", b":80", b"a:", b"a b", b""]


@st.composite
def request_parts(draw: st.DrawFn, valid_only: bool) -> tuple[bytes, list[Field]]:
    """A request head from the grammar, with its field lines; `valid_only` keeps to syntactically valid pieces
    (the name rules and the Host count may still refuse it)."""
    if valid_only:
        line = draw(st.tuples(st.sampled_from([b"GET", b"HEAD"]), st.just(b" /"), _over(bytes(range(0x21, 0x7f)), 0, 8),
                              st.just(b" HTTP/1.1\r\n")).map(b"".join))
    else:
        line = draw(st.tuples(_pick([b"GET", b"HEAD"], [b"POST", b"get", b"PUT", b""]), st.just(b" "),
                              _pick([b"/", b"/a?b=c", b"/%7e#f"], [b"", b"*", b"http://a/", b"/a b", b"/\x80"]),
                              st.just(b" "), _pick([b"HTTP/1.1"], [b"HTTP/1.0", b"HTTP/1.2", b"http/1.1"]),
                              _pick([b"\r\n"], [b"\n", b" \r\n"])).map(b"".join))
    fields = draw(st.lists(_field(valid_only, [*REQUEST_NAMES, b"Host"][: None if not valid_only else -1],
                                  REQUEST_VALUES), max_size=6))
    for _ in range(draw(st.sampled_from([1] * 8 + [0, 2]))):  # usually one Host line somewhere
        host = draw(st.sampled_from(HOSTS[:5] if valid_only else HOSTS))
        fields.insert(draw(st.integers(0, len(fields))), (b"Host: " + host + b"\r\n", b"Host", host))
    end = b"\r\n" if valid_only else draw(_pick([b"\r\n"], [b"", b"\n", b"\r\nx", b"\r\n" + WRK]))
    return line + b"".join(f[0] for f in fields) + end, fields


RESPONSE_NAMES = [b"Content-Length", b"content-length", b"Server", b"Fly-Request-Id", b"Keep-Alive", b"Connection",
                  b"Transfer-Encoding", b"Upgrade", b"TE", b"Trailer", b"Via", b"Fly-Replay", b"Proxy-Y", b"Date",
                  b"Content-Type"]
RESPONSE_VALUES = [b"keep-alive", b"close", b"3", b"003", b"chunked", b"text/plain"]


@st.composite
def response_parts(draw: st.DrawFn, valid_only: bool) -> tuple[bytes, list[Field], bytes]:
    """A response from the grammar, with its field lines and its body."""
    if valid_only:
        status = draw(st.integers(200, 599).filter(lambda s: s not in (204, 304)))
        line = b"HTTP/1.1 %d %s\r\n" % (status, draw(_value(True)))
    else:
        line = b"HTTP/1.1 %s %s%s" % (draw(_pick([b"200", b"404", b"503", b"302"], [b"204", b"304", b"101", b"20",
                                                                                     b"600", b"2x0"])),
                                      draw(_value(False)), draw(_pick([b"\r\n"], [b"\n"])))
    body = draw(st.binary(max_size=12))
    fields = draw(st.lists(_field(valid_only, RESPONSE_NAMES, RESPONSE_VALUES), max_size=6))
    if draw(st.integers(0, 9)):  # usually a Content-Length, usually the right one
        length = b"%d" % (len(body) + draw(st.sampled_from([0] * 8 + [-1, 1])))
        fields.insert(draw(st.integers(0, len(fields))), (b"Content-Length: " + length + b"\r\n", b"Content-Length",
                                                          length))
    return line + b"".join(f[0] for f in fields) + b"\r\n" + body, fields, body


requests = request_parts(False).map(lambda r: r[0])
responses = response_parts(False).map(lambda r: r[0])
tails = st.lists(_field(True, [b"Fly-Request-Id", b"Via", b"X-A"], [b"1"]), max_size=3).map(
    lambda fs: b"".join(f[0] for f in fs))


# --- differential: httptools (llhttp) -----------------------------------------------------------------------

class Seen:
    """What httptools reports for one feed: headers, body, completed messages."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.complete = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value.strip(b" \t")))  # llhttp trims leading OWS only

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete += 1


def llhttp_request(data: bytes) -> tuple[bytes, Seen]:
    seen = Seen()
    parser = httptools.HttpRequestParser(seen)
    parser.feed_data(data)  # raises on anything llhttp refuses
    assert seen.complete == 1, data
    return parser.get_method(), seen


def llhttp_response(data: bytes) -> tuple[int, Seen]:
    seen = Seen()
    parser = httptools.HttpResponseParser(seen)
    parser.feed_data(data)
    assert seen.complete == 1, data
    return parser.get_status_code(), seen


def check_request_against_llhttp(data: bytes, result: tuple[bytes, bytes, bytes]) -> None:
    method, host, kept = result
    got_method, seen = llhttp_request(data)
    assert got_method == method
    assert [v for n, v in seen.headers if n.lower() == b"host"] == [host]
    assert all(v.lower() == b"keep-alive" for n, v in seen.headers if n.lower() == b"connection")
    _, seen_kept = llhttp_request(kept + b"\r\n")
    assert seen_kept.headers == [(n, v) for n, v in seen.headers if n.lower() not in (b"connection", b"keep-alive")]
    assert seen.body == seen_kept.body == b""


def check_response_against_llhttp(data: bytes, tail: bytes, result: tuple[int, bytes]) -> None:
    status, out = result
    got_status, seen = llhttp_response(data)
    assert got_status == status
    assert all(v.lower() == b"keep-alive" for n, v in seen.headers if n.lower() == b"connection")
    out_status, seen_out = llhttp_response(out)
    assert out_status == status
    _, seen_tail = llhttp_response(b"HTTP/1.1 200 OK\r\n" + tail + b"Content-Length: 0\r\n\r\n")
    dropped = (b"server", b"fly-request-id", b"keep-alive", b"connection")
    assert seen_out.headers == [(n, v) for n, v in seen.headers if n.lower() not in dropped] + seen_tail.headers[:-1]
    assert seen_out.body == seen.body == data[len(data) - len(seen.body):]


@FAST
@given(data=requests, max_headers=st.integers(1, 8))
def test_accepted_requests_parse_the_same_in_llhttp(impl: Impl, data: bytes, max_headers: int) -> None:
    result = impl.scan_request(data, max_headers)
    if result is not None:
        check_request_against_llhttp(data, result)


@FAST
@given(data=responses, tail=tails)
def test_accepted_responses_parse_the_same_in_llhttp(impl: Impl, data: bytes, tail: bytes) -> None:
    result = impl.rewrite_response(data, tail)
    if result is not None:
        check_response_against_llhttp(data, tail, result)


def _request_refused(fields: list[Field]) -> bool:
    """The name rules, from the generator's own record of the lines (not from the code under test)."""
    names = [name.lower() for _, name, _ in fields]
    return names.count(b"host") != 1 or any(
        n in (b"content-length", b"transfer-encoding", b"upgrade", b"expect", b"te", b"trailer", b"via")
        or n.startswith((b"proxy-", b"x-forwarded-", b"fly-"))
        or (n == b"connection" and v.lower() != b"keep-alive") for (_, _, v), n in zip(fields, names, strict=True))


def _response_refused(fields: list[Field], body: bytes) -> bool:
    names = [name.lower() for _, name, _ in fields]
    return names.count(b"content-length") != 1 or any(
        n in (b"transfer-encoding", b"upgrade", b"te", b"trailer", b"via", b"fly-replay") or n.startswith(b"proxy-")
        or (n == b"connection" and v.lower() != b"keep-alive")
        or (n == b"content-length" and not (v.isdigit() and len(v) <= 15 and int(v) == len(body)))
        for (_, _, v), n in zip(fields, names, strict=True))


@FAST
@given(parts=request_parts(True))
def test_valid_requests_are_accepted_unless_a_rule_refuses(impl: Impl, parts: tuple[bytes, list[Field]]) -> None:
    data, fields = parts
    result = impl.scan_request(data, 100)
    assert (result is None) == _request_refused(fields), (data, result)
    if result is not None:
        check_request_against_llhttp(data, result)
        kept = [line for line, name, _ in fields if name.lower() not in (b"connection", b"keep-alive")]
        assert result[2] == data[:data.index(b"\r\n") + 2] + b"".join(kept)


@FAST
@given(parts=response_parts(True), tail=tails)
def test_valid_responses_are_accepted_unless_a_rule_refuses(impl: Impl, parts: tuple[bytes, list[Field], bytes],
                                                            tail: bytes) -> None:
    data, fields, body = parts
    result = impl.rewrite_response(data, tail)
    assert (result is None) == _response_refused(fields, body), (data, result)
    if result is not None:
        check_response_against_llhttp(data, tail, result)
        kept = [line for line, name, _ in fields
                if name.lower() not in (b"server", b"fly-request-id", b"keep-alive", b"connection")]
        assert result == (int(data[9:12]), data[:data.index(b"\r\n") + 2] + b"".join(kept) + tail + b"\r\n" + body)


# --- differential: C against the Python reference -----------------------------------------------------------

MUTATION_BYTES = b"\r\n\x00 :\t"


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        pos = rng.randrange(len(out) + 1)
        op = rng.randrange(3)
        if op == 0 and out:  # flip a bit
            out[min(pos, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:  # insert a framing byte
            out[pos:pos] = bytes([rng.choice(MUTATION_BYTES)])
        elif out:  # delete a byte
            del out[min(pos, len(out) - 1)]
    return bytes(out)


def test_mutations_keep_both_outcomes() -> None:
    """The mutation corpus below exercises both answers (else the C/Python comparison would prove little)."""
    rng = random.Random(9112)
    results = [simple.scan_request_py(mutate(rng, BROWSER), 100) for _ in range(500)]
    assert 10 < sum(r is None for r in results) < 490


def test_c_matches_python_on_mutated_messages() -> None:
    c = _c_module()
    rng = random.Random(9112)
    seeds = [WRK, CURL, BROWSER, *REQUEST_REJECTS.values()]
    for _ in range(6000):
        data = mutate(rng, rng.choice(seeds))
        max_headers = rng.choice([1, 2, 3, 100])
        assert c.scan_request(data, max_headers) == simple.scan_request_py(data, max_headers), (data, max_headers)
    seeds = [NGINX, *RESPONSE_REJECTS.values()]
    for _ in range(6000):
        data = mutate(rng, rng.choice(seeds))
        assert c.rewrite_response(data, TAIL) == simple.rewrite_response_py(data, TAIL), data


@FAST
@given(data=st.one_of(requests, request_parts(True).map(lambda r: r[0])), max_headers=st.integers(0, 8))
def test_c_matches_python_on_generated_requests(data: bytes, max_headers: int) -> None:
    c = _c_module()
    assert c.scan_request(data, max_headers) == simple.scan_request_py(data, max_headers)


@FAST
@given(data=st.one_of(responses, response_parts(True).map(lambda r: r[0])), tail=tails)
def test_c_matches_python_on_generated_responses(data: bytes, tail: bytes) -> None:
    c = _c_module()
    assert c.rewrite_response(data, tail) == simple.rewrite_response_py(data, tail)


def test_dispatcher_uses_c_when_built() -> None:
    c = _c_module()
    accelerated = not os.environ.get("SIXPN_NO_C")
    assert simple.ACCELERATED is accelerated
    assert simple.scan_request is (c.scan_request if accelerated else simple.scan_request_py)
    assert simple.rewrite_response is (c.rewrite_response if accelerated else simple.rewrite_response_py)
    code = "from edge_proxy.http1 import simple; print(simple.ACCELERATED, simple.scan_request.__module__)"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "SIXPN_NO_C": "1"}, check=True,
                         capture_output=True, text=True).stdout
    assert out.split() == ["False", "edge_proxy.http1.simple"]
