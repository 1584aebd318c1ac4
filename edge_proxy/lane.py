"""The edge's lane: the common exchange in two callbacks and two C calls.

A request that arrives whole in one read as a simple bodyless GET/HEAD (`simple.scan_request`), for an app
with a free local machine and an idle pooled connection to it, is rewritten and sent on straight from the
client connection's `data_received`; a response that arrives whole in one read as a simple Content-Length
message (`simple.rewrite_response`) is rewritten and sent back straight from the upstream connection's. No
Exchange, no per-header callback, no task.

Everything else is left to the fast path and the general path, where the same rules live: a request the lane
declines is parsed by httptools as if the lane did not exist, and an exchange already in the lane that meets
anything unusual (a partial or unusual response, a lost or silent machine, pipelined bytes, a client gone)
becomes a regular fast-path exchange first (`Flight.materialize`) and carries on there, so retries, holds,
fly-replay and timeouts behave exactly as they do without the lane.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import httptools

from edge_proxy import fastpath
from edge_proxy.http1 import head as h
from edge_proxy.http1.client import UpstreamConnection
from edge_proxy.http1.forward import HOLD_LIMIT
from edge_proxy.http1.server import Exchange, ServerConnection
from edge_proxy.http1.simple import rewrite_response, scan_request
from edge_proxy.metrics import Labels
from edge_proxy.table import AppRoute, MachineRoute

if TYPE_CHECKING:
    from edge_proxy.proxy import EdgeProxy

_END = b"\r\n\r\n"


class Route:
    """What the lane needs per Host header, fixed for one routing table (rebuilt when the catalog changes)."""

    __slots__ = ("app", "connections", "counts", "hard", "key", "only", "plan", "row", "table")

    def __init__(self, proxy: EdgeProxy, app: AppRoute) -> None:
        self.table = proxy.table
        self.app = app
        self.plan = plan = proxy.table.local_plan(app, proxy.region)
        self.connections = plan.kind == "connections"
        self.hard = plan.hard
        # The usual shape: one started machine in this region. Then `local_free` reduces to its health and
        # hard-limit checks (above its soft limit it is still the choice, rule 3: stay in the region).
        self.only = plan.local[0] if len(plan.local) == 1 else None
        self.key = proxy.resolve(self.only) if self.only is not None else None
        # Metric rows of this app: the requests counter per status, the duration histogram row.
        self.counts: dict[int, Labels] = {}
        self.row: list[float] | None = None


class Lane:
    """One per EdgeProxy: `take` is what a client connection tries first with each read."""

    def __init__(self, proxy: EdgeProxy) -> None:
        self.proxy = proxy
        self.tail = b"server: " + proxy.server_name + b"\r\nvia: " + proxy.via + b"\r\nfly-request-id: "
        self.routes: dict[bytes, Route | None] = {}
        self.first_byte = proxy.timeouts.first_byte

    def take(self, conn: ServerConnection, data: bytes) -> bool:
        """Send `data` upstream on the lane; False (nothing sent, nothing counted) leaves it to the parser."""
        limits = conn.limits
        found = scan_request(data, limits.max_headers) if len(data) <= limits.max_head_bytes else None
        if found is None:
            return False
        method, host, kept = found
        proxy = self.proxy
        route = self.routes.get(host)
        if route is None or route.table is not proxy.table:
            route = self._route(host)
            if route is None:
                return False
        machine = route.only
        if machine is not None:
            health = proxy.health
            if (health.active or health.down_until) and not health.healthy(machine.id):
                return False
            if route.hard is not None:
                book = proxy.load.connections if route.connections else proxy.load.requests
                load = book.get(machine.id, 0)
                if route.connections and conn.state.get("machine") == machine.id:
                    load -= 1
                if load >= route.hard:
                    return False  # queueing, or another region: the general path's business
            key = route.key
        else:
            own = conn.state.get("machine") if route.connections else None
            machine = fastpath.local_free(proxy, route.plan, own)
            if machine is None:
                return False
            key = proxy._keys.get(machine.id)
            if key is None:
                key = proxy._keys[machine.id] = proxy.resolve(machine)
        now = time.monotonic()
        upstream = proxy.pool.take_idle(key, now) if key is not None else None
        if upstream is None:
            return False  # connecting is the fast and general paths' business
        # Committed: counted, sent, and answered by the Flight (or, if anything goes wrong, by a Relay).
        if route.plan.idle_timeout is not None:
            conn.idle_timeout = route.plan.idle_timeout
        if route.connections and conn.state.get("machine") != machine.id:
            proxy._count_connection(conn, machine.id, "connections")
        book = proxy.load.requests
        book[machine.id] = book.get(machine.id, 0) + 1  # `LoadBook.add(+1)`: nobody waits for a rise
        rid = proxy.next_rid()
        flight = Flight(self, route, conn, upstream, machine, rid, method, host, kept, now)
        conn.flight = flight
        conn._deadline = 0.0  # no idle/head timeout while a request is in flight (`_timeout` would close)
        upstream.lane = flight
        upstream.responded = False
        transport = upstream.transport
        assert transport is not None  # a pooled connection is a connected one
        transport.write(b"".join((kept, conn.lane_prefix or self._prefix(conn), rid, _END)))
        conn.first_byte_at = now + self.first_byte
        conn.first_byte_late = flight.late
        return True

    def _route(self, host: bytes) -> Route | None:
        app = self.proxy.table.app_for_host_header(host)
        route = Route(self.proxy, app) if app is not None else None
        if len(self.routes) > 4096:
            self.routes.clear()
        self.routes[host] = route
        return route

    def _prefix(self, conn: ServerConnection) -> bytes:
        """The request fields the edge adds that are the same for every request on `conn` (as `request_head`)."""
        proxy = self.proxy
        ip = conn.peer[0].removeprefix("::ffff:").encode()
        fixed = fastpath.fixed_headers(proxy, conn)
        conn.lane_prefix = (b"fly-client-ip: " + ip + b"\r\nx-forwarded-for: " + ip + b"\r\n" + fixed + b"via: "
                            + proxy.via + b"\r\nfly-request-id: ")
        return conn.lane_prefix


class Flight:
    """One request on the lane, from the request sent to the response written (or to `materialize`)."""

    __slots__ = ("conn", "host", "kept", "lane", "machine", "method", "rid", "route", "started", "upstream")

    def __init__(self, lane: Lane, route: Route, conn: ServerConnection, upstream: UpstreamConnection,
                 machine: MachineRoute, rid: bytes, method: bytes, host: bytes, kept: bytes, started: float) -> None:
        self.lane = lane
        self.route = route
        self.conn = conn
        self.upstream = upstream
        self.machine = machine
        self.rid = rid
        self.method = method
        self.host = host
        self.kept = kept
        self.started = started

    def response(self, data: bytes) -> bool:
        """The upstream's read; False: not a simple complete response, and the exchange is now a Relay's."""
        conn = self.conn
        # HEAD: its response has no body, and the parser knows what to do about that. Draining: the answer
        # says `connection: close`, which the Exchange adds.
        found = (rewrite_response(data, self.lane.tail + self.rid + b"\r\n")
                 if self.method == b"GET" and not conn.draining else None)
        if found is None:
            self.materialize()
            return False
        status, out = found
        upstream = self.upstream
        conn.flight = None
        upstream.lane = None
        conn.first_byte_at = 0.0
        conn.first_byte_late = None
        conn.write(out)
        proxy = self.lane.proxy
        now = time.monotonic()
        upstream.requests += 1
        proxy.pool.release(upstream, now)
        proxy.load.add(proxy.load.requests, self.machine.id, -1)
        proxy.finish_lane(self, status, len(out), now)
        conn._deadline = now + conn.idle_timeout  # `_arm`: the connection is on the sweeper since it opened
        return True

    def late(self) -> None:
        """No response head within the first-byte timeout: the fast path's rules (504, or a retry)."""
        relay = self.materialize()
        relay.first_byte_timeout()

    def materialize(self) -> fastpath.Relay:
        """Make this request an ordinary fast-path exchange: a parsed head, an Exchange that is the connection's
        current one, and a Relay as the upstream's sink, in the state `fastpath.start` leaves them after
        sending. Whatever interrupted the lane then goes on through the regular code."""
        conn, upstream, proxy = self.conn, self.upstream, self.lane.proxy
        conn.flight = None
        upstream.lane = None
        ex = Exchange(conn, parse_head(self.kept + b"\r\n"))
        ex.body.finish()
        ex.dispatched = True
        conn._current = ex
        app = self.route.app
        info: dict[str, object] = {"app": app.name, "machine": self.machine.id, "region": self.machine.region,
                                   "retries": 0, "replays": 0}
        relay = fastpath.Relay(proxy, ex, upstream, app, self.machine, self.rid.decode(), self.rid, info,
                               self.started)
        relay.hold = HOLD_LIMIT  # GET/HEAD without a body: can be sent again
        responded = upstream.responded
        upstream.begin(relay, ex.head.method)
        upstream.responded = responded
        relay.request_sent = True
        relay.first_byte = proxy.timeouts.first_byte
        conn.first_byte_at = self.started + relay.first_byte
        conn.first_byte_late = relay.first_byte_timeout
        return relay


class _HeadParts:
    """httptools target collecting a head the lane already validated (`scan_request`)."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: h.Headers = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))


def parse_head(data: bytes) -> h.RequestHead:
    """The RequestHead the server connection would have built for `data` (a head `scan_request` accepted)."""
    parts = _HeadParts()
    parser = httptools.HttpRequestParser(parts)
    parser.feed_data(data)
    head = h.RequestHead(method=parser.get_method(), target=parts.url, version=b"1.1", headers=parts.headers)
    h.validate_request(head)
    return head
