"""The request fields the edge adds, appends to, drops or refuses: one table for every way into the proxy.

The general path (`proxy.EdgeProxy._request_headers`), the fast path (`fastpath.request_head`) and the lane's
recognizers (`http1/simple.py` and `http1/_simple.c`, which reads `LANE_REQUEST` and `LANE_PREFIXES` from here
when it is loaded) all take their sets from this module.

Underscores: CGI, WSGI, Rack and PHP map a field name to `HTTP_<NAME>` with `-` turned into `_`, so for such an
app `X_Forwarded_For: 6.6.6.6` is the same variable as the `X-Forwarded-For` the edge writes, and whichever comes
last wins. Every spelling with `_` of a field in this table is dropped on every path (nginx drops every such
field with `underscores_in_headers off`); the lane, which matches names with `_` read as `-`, drops a
`Keep_Alive` itself like a `Keep-Alive` and leaves the other requests to the parser paths, which drop them.
"""

from __future__ import annotations

from collections.abc import Iterable

from edge_proxy.http1.head import HOP_BY_HOP

#: Set by the edge on every request (spec "Headers added", and fly-replay's): a client's copy is dropped.
OWNED = frozenset({
    b"fly-client-ip", b"fly-region", b"fly-request-id", b"fly-forwarded-port", b"x-forwarded-proto",
    b"x-forwarded-port", b"x-forwarded-ssl", b"fly-replay-src", b"fly-preferred-instance-unavailable",
})
#: The client's values are kept and the edge appends its own.
APPENDED = frozenset({b"x-forwarded-for", b"via"})
#: Request steering (spec "Choosing a machine" 6): read by the edge, passed on.
STEERING = frozenset({b"fly-prefer-region", b"fly-force-region", b"fly-prefer-instance-id",
                      b"fly-force-instance-id"})
#: Message framing and the forwarder's own (RFC 9112 §6, RFC 9110 §10.1.1): re-done by the edge upstream.
FRAMING = frozenset({b"content-length", b"transfer-encoding"})
EXPECT = b"expect"


def underscore_spellings(names: Iterable[bytes]) -> frozenset[bytes]:
    """Every spelling of each name with `_` in place of one or more of its `-` (`x_forwarded-for`, ...)."""
    out: set[bytes] = set()
    for name in names:
        parts = name.split(b"-")
        spellings = [parts[0]]
        for part in parts[1:]:
            spellings = [s + sep + part for s in spellings for sep in (b"-", b"_")]
        out.update(s for s in spellings if b"_" in s)
    return frozenset(out)


#: Fields the edge acts on (sets, appends to, reads, strips or re-frames).
EDGE_FIELDS = OWNED | APPENDED | STEERING | FRAMING | HOP_BY_HOP
#: Their `_` spellings: dropped from every request, on every path.
UNDERSCORED = underscore_spellings(EDGE_FIELDS)
#: Dropped from every request by the general and fast paths (a Connection header may name more).
DROPPED = HOP_BY_HOP | OWNED | UNDERSCORED

# -- the lane -------------------------------------------------------------------------------------------------
# What the lane's recognizers do with a request field, by name lower-cased and with `_` read as `-`. The values
# are those of `enum kind` in _simple.c.
KEEP, DROP, REJECT, HOST = 0, 1, 2, 3
CONNECTION = 5
#: The lane takes only bodiless requests whose fields the edge does not act on (REJECT: the parser paths'
#: business); it drops a `Connection: keep-alive` and `Keep-Alive` itself.
LANE_REQUEST: dict[bytes, int] = {
    **{name: REJECT for name in EDGE_FIELDS | {EXPECT}},
    b"host": HOST, b"connection": CONNECTION, b"keep-alive": DROP,
}
#: And none whose name starts with one of these (REJECT).
LANE_PREFIXES = (b"proxy-", b"x-forwarded-", b"fly-")
