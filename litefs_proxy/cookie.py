"""The `__txid` cookie, byte for byte as LiteFS writes it (Go's http.SetCookie) and reads it (r.Cookie).

Set:  `__txid=000000000000002a; Path=/; Expires=Thu, 26 Nov 2026 04:35:00 GMT; HttpOnly`
Read: the first `__txid` in the Cookie header(s) whose value is exactly 16 hex digits; anything else is
ignored (LiteFS's ltx.ParseTXID fails and the read is forwarded at once).
"""

from __future__ import annotations

import re
from email.utils import formatdate

TXID_COOKIE = "__txid"
_HEX16 = re.compile(r"[0-9a-fA-F]{16}")


def format_txid(txid: int) -> str:
    """ltx.TXID.String(): 16 lower-case hex digits."""
    return f"{txid:016x}"


def parse_txid(value: str) -> int | None:
    """ltx.ParseTXID: exactly 16 hex digits (no sign, prefix or underscore, which Python's int() accepts)."""
    if not _HEX16.fullmatch(value):
        return None
    return int(value, 16)


def _valid_cookie_value(value: str) -> bool:
    # Go's validCookieValueByte (RFC 6265 §4.1.1, relaxed for space and comma as Go is).
    return all(0x20 <= ord(c) < 0x7F and c not in '";\\' for c in value)


def cookie_value(cookie_headers: list[str], name: str = TXID_COOKIE) -> str | None:
    """The first value of cookie `name` across the request's Cookie headers, as Go 1.21's r.Cookie finds it
    (net/http cookie.go readCookies): parts split on `;` and trimmed, the name trimmed, the value taken as is
    (`__txid` alone is a cookie with the value ""; `__txid= 1` has the value " 1"), quotes stripped."""
    for line in cookie_headers:
        for part in line.split(";"):
            part = part.strip(" \t")
            if not part:
                continue
            key, _, value = part.partition("=")
            if key.strip(" \t") != name:
                continue
            if len(value) > 1 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if _valid_cookie_value(value):
                return value
    return None


def request_txid(cookie_headers: list[str]) -> int:
    """The client's last-write TXID, or 0 when missing, malformed or zero (all mean: do not wait)."""
    value = cookie_value(cookie_headers)
    if value is None:
        return 0
    return parse_txid(value) or 0


def http_date(when: float) -> str:
    """Go's http.TimeFormat (`Mon, 02 Jan 2006 15:04:05 GMT`), whole seconds, locale-independent."""
    return formatdate(int(when), usegmt=True)


def set_cookie(txid: int, now: float, expiry: float = 300.0) -> str:
    """The Set-Cookie value LiteFS sends after a write on the primary (expires in 5 minutes)."""
    return f"{TXID_COOKIE}={format_txid(txid)}; Path=/; Expires={http_date(now + expiry)}; HttpOnly"
