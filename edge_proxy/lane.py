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
from edge_proxy.table import AppRoute, MachineRoute

if TYPE_CHECKING:
    from edge_proxy.proxy import EdgeProxy

_END = b"\r\n\r\n"


class Lane:
    """One per EdgeProxy: `take` is what a client connection tries first with each read."""

    def __init__(self, proxy: EdgeProxy) -> None:
        self.proxy = proxy
        self.tail = b"server: " + proxy.server_name + b"\r\nvia: " + proxy.via + b"\r\nfly-request-id: "

    def take(self, conn: ServerConnection, data: bytes) -> bool:
        """Send `data` upstream on the lane; False (nothing sent, nothing counted) leaves it to the parser."""
        proxy = self.proxy
        found = scan_request(data, conn.limits.max_headers)
        if found is None or len(data) > conn.limits.max_head_bytes:
            return False
        method, host, kept = found
        app = proxy.table.app_for_host_header(host)
        if app is None:
            return False
        plan = proxy.table.local_plan(app, proxy.region)
        own = conn.state.get("machine") if plan.kind == "connections" else None
        machine = fastpath.local_free(proxy, plan, own)
        if machine is None:
            return False  # steering across regions, limits, queueing: the fast and general paths' business
        key = proxy._keys.get(machine.id)
        if key is None:
            key = proxy._keys[machine.id] = proxy.resolve(machine)
        now = time.monotonic()
        upstream = proxy.pool.take_idle(key, now)
        if upstream is None:
            return False
        # Committed: counted, sent, and answered by the Flight (or, if anything goes wrong, by a Relay).
        if plan.idle_timeout is not None:
            conn.idle_timeout = plan.idle_timeout
        if plan.kind == "connections":
            proxy._count_connection(conn, machine.id, plan.kind)
        proxy.load.add(proxy.load.requests, machine.id, 1)
        rid = proxy.next_rid()
        flight = Flight(self, conn, upstream, app, machine, rid, method, host, kept, now)
        conn.flight = flight
        conn._deadline = 0.0  # no idle/head timeout while a request is in flight (`_timeout` would close)
        upstream.lane = flight
        upstream.responded = False
        prefix = conn.lane_prefix or self._prefix(conn)
        upstream.write(b"".join((kept, prefix, rid, _END)))
        conn.first_byte_at = now + proxy.timeouts.first_byte
        conn.first_byte_late = flight.late
        return True

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

    __slots__ = ("app", "conn", "host", "kept", "lane", "machine", "method", "rid", "started", "upstream")

    def __init__(self, lane: Lane, conn: ServerConnection, upstream: UpstreamConnection, app: AppRoute,
                 machine: MachineRoute, rid: bytes, method: bytes, host: bytes, kept: bytes, started: float) -> None:
        self.lane = lane
        self.conn = conn
        self.upstream = upstream
        self.app = app
        self.machine = machine
        self.rid = rid
        self.method = method
        self.host = host
        self.kept = kept
        self.started = started

    def response(self, data: bytes) -> bool:
        """The upstream's read; False: not a simple complete response, and the exchange is now a Relay's."""
        found = rewrite_response(data, self.lane.tail + self.rid + b"\r\n")
        if found is None or self.method == b"HEAD":
            self.materialize()
            return False
        status, out = found
        conn, upstream = self.conn, self.upstream
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
        if conn.draining or conn._eof:
            conn.close()  # as `ServerConnection._finish`: answered, and the connection was to end after it
        else:
            conn._arm(conn.idle_timeout, now)
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
        info: dict[str, object] = {"app": self.app.name, "machine": self.machine.id, "region": self.machine.region,
                                   "retries": 0, "replays": 0}
        relay = fastpath.Relay(proxy, ex, upstream, self.app, self.machine, self.rid.decode(), self.rid, info,
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
