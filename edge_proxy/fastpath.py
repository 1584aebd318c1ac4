"""The edge's fast path: a keep-alive request without a body, routed to a pooled upstream connection, driven
by Protocol callbacks from head to end (no task, no future, no coroutine per request).

`start` (what `EdgeProxy.fast` calls) routes with `local_free` (the chooser's answer from a per-table plan and
the load counters), builds the upstream request head in one pass on bytes (`request_head`) and hands it to a
`Relay`, the response sink that streams the answer back (the same `_Flow` machinery `forward` uses). Whatever
the fast path does not cover is passed on, before anything was sent, to the general `EdgeProxy.handle`; a first
attempt that needs more (a retry after a dead pooled connection, a fly-replay, an upstream timeout) continues
there as a task from a `Pending` that carries this attempt's outcome, so both paths share one set of rules.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from edge_proxy import fields
from edge_proxy.errors import UpstreamError
from edge_proxy.http1 import head as h
from edge_proxy.http1.client import UpstreamConnection
from edge_proxy.http1.forward import FRAMING, HOLD_LIMIT, REQUEST_OWN, ForwardResult, _Flow
from edge_proxy.http1.server import Exchange, ServerConnection
from edge_proxy.routing import STEERING_HEADERS
from edge_proxy.table import AppRoute, LocalPlan, MachineRoute

if TYPE_CHECKING:
    from edge_proxy.proxy import EdgeProxy


#: Request fields the fast path does not copy upstream (it adds its own, the field is hop-by-hop, or it is an
#: underscore spelling of an edge field: `fields.DROPPED`).
_DROP = fields.DROPPED | REQUEST_OWN | fields.APPENDED
#: Request fields the fast path acts on: dropped, appended to, or (steering) sending it to the general path.
_SPECIAL = _DROP | STEERING_HEADERS
_APPENDED = STEERING_HEADERS | fields.APPENDED
#: Response fields the relay drops, merges (Via) or hands to the general rules (fly-replay, Connection).
_RESPONSE_SPECIAL = h.HOP_BY_HOP | FRAMING | {b"server", b"fly-request-id", b"via", b"fly-replay"}
#: Fields the edge adds to a response: a Connection header naming one of them takes the general rules.
_RESPONSE_ADDED = frozenset({b"server", b"via", b"fly-request-id"})


def start(proxy: EdgeProxy, ex: Exchange) -> bool:
    """Start `ex` on the fast path; False (before anything was sent or counted) leaves it to `proxy.handle`."""
    head = ex.head
    if head.framing != "none" or head.upgrade or head.expect_continue:
        return False
    app = proxy.table.app_for_host_header(head.host)
    if app is None:
        return False
    own = ex.conn.state.get("machine")
    plan = proxy.table.local_plan(app, proxy.region)
    machine = local_free(proxy, plan, own)
    if machine is None:
        decision = proxy.chooser.choose(proxy.candidates(app, own), proxy._default_steer)
        candidate = decision.machine
        if candidate is None or decision.outcome != "ok":
            return False
        machine = proxy.table.machines[candidate.id]
    request_id = proxy.next_request_id()
    rid = request_id.encode()
    request = request_head(proxy, ex, rid)
    if request is None:
        return False
    key = proxy._keys.get(machine.id)
    if key is None:
        key = proxy._keys[machine.id] = proxy.resolve(machine)
    now = time.monotonic()  # one clock read for the pool, the request's start and its first-byte deadline
    upstream = proxy.pool.take_idle(key, now)
    if upstream is None:
        return False  # connecting (or waiting for a free slot) is the general path's business
    # Committed from here on: counted, sent, and answered by the Relay.
    if plan.idle_timeout is not None:
        ex.conn.idle_timeout = plan.idle_timeout
    info: dict[str, object] = {"app": app.name, "machine": machine.id, "region": machine.region,
                               "retries": 0, "replays": 0}
    if plan.kind == "connections":
        proxy._count_connection(ex.conn, machine.id, plan.kind)
    proxy.load.add(proxy.load.requests, machine.id, 1)
    relay = Relay(proxy, ex, upstream, app, machine, request_id, rid, info, now)
    if head.idempotent:
        relay.hold = HOLD_LIMIT  # no request body here: a GET can be sent again (see `_Flow.hold`)
    upstream.begin(relay, head.method)
    upstream.write(request)
    relay.request_sent = True
    relay.arm(proxy.timeouts.first_byte, body_pending=False)
    return True


def local_free(proxy: EdgeProxy, plan: LocalPlan, own: str | None) -> MachineRoute | None:
    """`Chooser.choose` without steering, when some usable local machine exists, without building
    candidates: then the choice is among local machines only (rule 3), whatever remote ones look like, so
    only their load counters and health are read here. None: ask the full chooser."""
    if not plan.local:
        return None
    book = proxy.load.requests if plan.kind == "requests" else proxy.load.connections
    own_counts = plan.kind == "connections"
    health = proxy.health
    check = bool(health.active or health.down_until)
    soft, hard = plan.soft, plan.hard
    free: list[MachineRoute] = []
    busy: list[tuple[float, MachineRoute]] = []
    for m in plan.local:
        if check and not health.healthy(m.id):
            continue
        load = book.get(m.id, 0)
        if own_counts and own == m.id:
            load -= 1
        if hard is not None and load >= hard:
            continue
        if load < soft:
            free.append(m)
        elif not free:
            busy.append((load / soft, m))
    if not free:
        # Every usable local machine above its soft limit: rule 3 keeps the request local, on the least
        # loaded relative to its soft limit (`Chooser._choose`'s last tier).
        if not busy:
            return None
        least = min(ratio for ratio, _ in busy)
        free = [m for ratio, m in busy if ratio <= least]
    if len(free) == 1:
        return free[0]
    chooser = proxy.chooser  # Chooser._nearest on the same figures
    rtts = [proxy.rtt.rtt(m.host) for m in free]
    best = min(rtts)
    window = max(chooser.tie_ms, best * chooser.tie_fraction)
    tied = [m for m, rtt in zip(free, rtts, strict=True) if rtt <= best + window]
    return tied[0] if len(tied) == 1 else chooser.rng.choice(tied)


def request_head(proxy: EdgeProxy, ex: Exchange, request_id: bytes, special: frozenset[bytes] = _SPECIAL,
                 named: bool = False) -> bytes | None:
    """The upstream request head as one bytes object, or None when the request needs the general path
    (steering headers). Same fields, in the same order, as `_request_headers` + `request_head_bytes`
    produce for a request without a body. `special`: fields dropped or acted on (plus, once `named`,
    those the Connection header names)."""
    head = ex.head
    parts = [head.method, b" ", head.target, b" HTTP/1.1\r\n"]
    xff = via = b""
    has_host = False
    for k, v in head.headers:
        if k in special:
            if k in STEERING_HEADERS:
                return None
            if k == b"x-forwarded-for":
                xff = xff + b", " + v if xff else v
            elif k == b"via":
                via = via + b", " + v if via else v
            elif k == b"connection" and not named and v not in h.PLAIN_CONNECTION:
                # Rare enough to pay a second pass: fields it names are hop-by-hop (RFC 9110 §7.6.1).
                tokens = h.connection_tokens(head.headers)
                if tokens & _APPENDED:
                    return None  # naming a field we append to: the general path's rules, exactly
                if tokens - special:  # `keep-alive`, `close` are dropped anyway: no second pass
                    return request_head(proxy, ex, request_id, special | tokens, True)
            continue
        if k == b"host":
            has_host = True
        parts += [k, b": ", v, b"\r\n"]
    client_ip = ex.conn.peer[0]
    if client_ip.startswith("::ffff:"):
        client_ip = client_ip[7:]
    ip = client_ip.encode()
    fixed = proxy._fixed_headers.get((ex.conn.local_port, ex.conn.scheme)) or fixed_headers(proxy, ex.conn)
    parts += [b"fly-client-ip: ", ip, b"\r\nx-forwarded-for: ", xff + b", " + ip if xff else ip, b"\r\n",
              fixed, b"via: ", via + b", " + proxy.via if via else proxy.via, b"\r\nfly-request-id: ",
              request_id, b"\r\n"]
    if not has_host and head.host:
        parts += [b"host: ", head.host, b"\r\n"]
    if head.method in (b"POST", b"PUT", b"PATCH"):
        parts.append(b"content-length: 0\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def fixed_headers(proxy: EdgeProxy, conn: ServerConnection) -> bytes:
    """The added request fields that depend only on the listener (port and scheme), memoized per proxy."""
    fixed = proxy._fixed_headers.get((conn.local_port, conn.scheme))
    if fixed is None:
        port = str(conn.local_port).encode()
        tls = conn.scheme == "https"
        fixed = proxy._fixed_headers[(conn.local_port, conn.scheme)] = (
            b"x-forwarded-proto: " + (b"https" if tls else b"http") + b"\r\nx-forwarded-port: " + port
            + b"\r\nx-forwarded-ssl: " + (b"on" if tls else b"off") + b"\r\nfly-forwarded-port: " + port
            + b"\r\nfly-region: " + proxy.region_bytes + b"\r\n")
    return fixed


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

    __slots__ = ("app", "fields", "info", "machine", "proxy", "request_id", "rid", "started")

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
        self.fields = b""

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
        # `_holdable` inlined: framing is "length", "chunked" or "close" here, and a fast-path request has no
        # body, so it can always be sent again.
        if self.hold and (head.content_length <= self.hold if head.framing == "length" else
                          head.framing == "chunked"):
            self.fields = fields
            self.holding = True
        else:
            ex = self.ex
            ex.start_prepared(head.status, head.reason, fields,
                              head.content_length if head.framing == "length" else None)
            ex.on_client_writable(self._client_writable)
        if self.head_pending:
            self.head_pending = False
            self._head_ready(head)

    def _open(self) -> None:
        if not self.fields:  # held by the general code (`_Flow.response_head`)
            super()._open()
            return
        head = self.head
        assert head is not None
        self.ex.start_prepared(head.status, head.reason, self.fields,
                               head.content_length if head.framing == "length" else None)

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
        if self.holding:
            self.held = self.held + data if self.held else data  # one read (the common case): no copy
        elif not self.discard:
            ex = self.ex
            if ex._chunked:
                ex.write(data)
            elif data:
                ex._write(data)  # Content-Length framing: `write` minus a call

    def response_end(self) -> None:
        if self.holding and self.fields:
            # Held and now complete (the common case: head and body in one read): `_Flow.response_end` with
            # the calls the streaming path made, no more: the head and the body go out in one write.
            self.holding = False
            head, ex = self.head, self.ex
            assert head is not None
            framed = head.framing == "length"
            ex.start_prepared(head.status, head.reason, self.fields, head.content_length if framed else None)
            held, self.held = self.held, b""
            if framed:
                ex._write(held)
            else:
                ex.write(held)
            ex.end()
            ex.on_client_writable(None)
            if self.end_pending:
                self.end_pending = False
                self._ended()
            return
        super().response_end()

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

    def _held_failed(self, exc: UpstreamError) -> None:
        # Not stale: the machine answered and then died (SIGKILL mid-response). The general path marks it
        # down and retries on the next candidate, as if no response had come.
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

