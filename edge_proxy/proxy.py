"""The edge proxy's request handler: Host -> app, the routing core, forwarding with retries, fly-replay,
queueing at hard limit, the headers of the spec, access log and metrics.

Proxy-originated errors carry `fly-proxy-error: <code>` and the same code in the access log:

    PR01 no healthy machines          PR02 no app for this host       PR03 every machine at hard limit
    PR04 upstream connect/refused     PR05 upstream timed out         PR06 invalid upstream response
    PR07 request not replayable       PR08 too many replays / bad fly-replay
    PR09 forced region/instance unavailable
    PH01 malformed request (400)      PH02 head too large (431)       PH03 head timeout (408)
    PH04 connection refused: the worker is at max_connections (logged and counted, no response)
"""

from __future__ import annotations

import bisect
import ipaddress
import json
import logging
import random
import sys
import time
from collections.abc import Callable
from typing import IO

from catalog import State, default_regions
from edge_proxy import fastpath, fields
from edge_proxy.config import ProxyConfig
from edge_proxy.errors import HttpError, UpstreamError
from edge_proxy.fastpath import Pending
from edge_proxy.health import HealthBook, LoadBook, RttBook
from edge_proxy.http1 import head as h
from edge_proxy.http1.client import Key, UpstreamPool
from edge_proxy.http1.forward import HOLD_LIMIT, BodyTee, ForwardResult, Timeouts, forward
from edge_proxy.http1.server import Exchange, ServerConnection
from edge_proxy.lane import Flight, Lane
from edge_proxy.metrics import BUCKETS, Labels, Metrics
from edge_proxy.routing import (
    MAX_REPLAYS,
    REPLAY_BODY_LIMIT,
    Candidate,
    Chooser,
    Decision,
    Replay,
    ReplayError,
    Steering,
    parse_replay,
    replay_src,
    replay_steering,
    steering_from_headers,
)
from edge_proxy.table import AppRoute, MachineRoute, Resolver, RoutingTable, default_resolver

log = logging.getLogger("edge_proxy")

MAX_RETRIES = 3

class EdgeProxy:
    def __init__(self, config: ProxyConfig, region: str, resolve: Resolver = default_resolver,
                 metrics: Metrics | None = None, access_log: IO[str] | None = None) -> None:
        self.config = config
        self.region = region
        self.resolve = resolve
        self.table = RoutingTable(State(), config.domain)
        self.health = HealthBook(config.passive_down)
        self.load = LoadBook()
        regions = default_regions()

        def seed(host: str) -> float:
            other = self.table.host_regions.get(host, region)
            try:
                return regions.rtt(region, other)
            except Exception:
                return 100.0

        self.rtt = RttBook(seed, measure=config.measure_rtt)
        self.chooser = Chooser(region)
        self.pool = UpstreamPool(max_per_key=config.pool_max_per_machine)
        self.metrics = metrics or Metrics()
        self.timeouts = Timeouts(connect=config.connect_timeout, first_byte=config.first_byte_timeout)
        self.access_log = access_log if access_log is not None else (sys.stderr if config.access_log == "-" else None)
        self.via = f"1.1 {config.name}".encode()
        self.region_bytes = region.encode()
        self.server_name = config.name.encode()
        self.connections: set[ServerConnection] = set()
        self.clients: dict[str, int] = {}  # open connections by `client_key`
        # Open connections, oldest first, that may still be waiting for their first request head (entries of
        # connections that have sent one are dropped when `_evict_new` meets them: no work per request).
        self._new: dict[ServerConnection, None] = {}
        # Request ids: a per-process random prefix and a counter (unique per worker, no entropy per request).
        self._id_prefix = f"{random.getrandbits(48):012x}"
        self._id_prefix_bytes = self._id_prefix.encode()
        self._id_seq = 0
        self.lane = Lane(self)
        self._fixed_headers: dict[tuple[int, str], bytes] = {}
        self._default_steer = Steering()
        self._keys: dict[str, Key] = {}  # machine id -> upstream (host, port): the resolver is fixed
        self._metric_keys: dict[tuple[str, int], tuple[Labels, Labels]] = {}

    # -- state from the catalog -------------------------------------------------------------------

    def update(self, state: State) -> None:
        previous = self.table.contested
        self.table = RoutingTable(state, self.config.domain)
        if self.table.contested != previous and self.table.contested:
            log.warning("hostnames listed by more than one app, routed to none of them: %s",
                        ", ".join(sorted(self.table.contested)))
        self._keys = {}  # a machine's address can change with the catalog
        self.pool.retain({self.resolve(m) for app in self.table.apps.values() for m in app.machines if m.started})

    def candidates(self, app: AppRoute, own: str | None = None) -> list[Candidate]:
        """`own`: the machine this client connection already counts on (connections mode): not counted twice."""
        conc = app.concurrency
        kind = conc.type
        out = []
        for m in app.machines:
            load = self.load.load(m.id, kind)
            if own == m.id and kind == "connections":
                load -= 1
            out.append(Candidate(
                id=m.id, region=m.region, host=m.host, rtt_ms=self.rtt.rtt(m.host),
                load=load, soft_limit=conc.soft_limit, hard_limit=conc.hard_limit,
                healthy=self.health.healthy(m.id), started=m.started,
            ))
        return out

    # -- the handler ------------------------------------------------------------------------------------

    def next_request_id(self) -> str:
        self._id_seq += 1
        return f"{self._id_prefix}{self._id_seq:08x}"

    def next_rid(self) -> bytes:
        """`next_request_id` as bytes (the lane's)."""
        self._id_seq += 1
        return self._id_prefix_bytes + b"%08x" % self._id_seq

    async def handle(self, ex: Exchange, pending: Pending | None = None) -> None:
        """The general path; `pending`: a fast-path attempt to carry on from (see `fastpath`)."""
        if pending is None:
            started = time.monotonic()
            request_id = self.next_request_id()
            info: dict[str, object] = {"app": "", "machine": "", "retries": 0, "replays": 0}
        else:
            started, request_id, info = pending.started, pending.request_id, pending.info
        try:
            await self._handle(ex, request_id, info, pending)
        except HttpError as exc:
            if not ex.started:
                ex.respond_error(exc, [(b"fly-request-id", request_id.encode()), (b"server", self.server_name)])
                self.metrics.inc("sixpn_edge_proxy_errors_total", code=exc.code)
            else:
                ex.abort()
        finally:
            self.finish(ex, request_id, info, started)

    async def _handle(self, ex: Exchange, request_id: str, info: dict[str, object], pending: Pending | None) -> None:
        app = pending.app if pending is not None else self.table.app_for_host_header(ex.head.host)
        if app is None:
            raise HttpError(404, "PR02", f"no app for host {h.host_name(ex.head.host)!r}")
        info["app"] = app.name
        if app.idle_timeout is not None:
            ex.conn.idle_timeout = app.idle_timeout
        steer = steering_from_headers(ex.head.headers)
        tee = BodyTee(ex, REPLAY_BODY_LIMIT)
        src = ""
        tried: set[str] = set()
        replays = 0
        stale_retry = False
        deadline = time.monotonic() + self.config.queue_timeout
        while True:
            attempt, pending = pending, None
            if attempt is not None:
                machine = attempt.machine  # the fast path's first attempt, already made
            else:
                current = steer if not tried else Steering(
                    steer.prefer_region, steer.force_region, steer.prefer_instance, steer.force_instance,
                    steer.exclude | tried)
                decision = self.chooser.choose(self.candidates(app, ex.conn.state.get("machine")), current)
                chosen = await self._decide(app, decision, deadline)
                if chosen is None:
                    continue  # capacity freed: choose again
                machine = chosen
            info["machine"], info["region"] = machine.id, machine.region
            try:
                if attempt is not None:
                    result = attempt.outcome()
                else:
                    headers = self._request_headers(ex, request_id, src, decision.preferred_unavailable)
                    result = await self._forward(ex, app, machine, headers, tee, replays)
            except UpstreamError as exc:
                if not await self._retryable(ex, exc, tee, stale_retry):
                    if not exc.stale and not ex.client_gone and ex.body.error is None:
                        self.health.mark_down(machine.id)  # it refused or reset: passive health (rule 5)
                    raise HttpError(502, "PR04", f"upstream {machine.id}: {exc}") from None
                if exc.stale and not stale_retry:
                    # A pooled connection the machine had closed (it restarted, or timed it out): its other
                    # idle ones are suspect too. Same machine, new connection.
                    stale_retry = True
                    self.pool.drop_idle(self.resolve(machine))
                else:
                    self.health.mark_down(machine.id)
                    tried.add(machine.id)
                info["retries"] = int(str(info["retries"])) + 1
                self.metrics.inc("sixpn_edge_retries_total", app=app.name)
                if len(tried) > MAX_RETRIES:
                    raise HttpError(502, "PR04", f"upstream failed after {len(tried)} attempts: {exc}") from None
                continue
            if not result.discarded:
                info["status"] = result.status
                return
            # fly-replay: the app asked for the request to go elsewhere.
            replay = self._parse_replay(result)
            replays += 1
            info["replays"] = replays
            self.metrics.inc("sixpn_edge_replays_total", app=app.name)
            if not await tee.fill():
                raise HttpError(413, "PR07", "request body over 1 MiB cannot be replayed")
            app = self._replay_app(app, replay)
            steer = replay_steering(replay, machine.id)
            tried = set()
            src = replay_src(machine.id, machine.region, int(time.time() * 1_000_000), replay.state)

    async def _decide(self, app: AppRoute, decision: Decision, deadline: float) -> MachineRoute | None:
        if decision.outcome == "ok" and decision.machine is not None:
            return self.table.machines[decision.machine.id]
        if decision.outcome == "at_capacity":
            remaining = deadline - time.monotonic()
            if remaining > 0 and await self.load.wait_for_capacity(remaining):
                return None
            raise HttpError(503, "PR03", "every machine is at its hard limit")
        if decision.outcome == "forced_unavailable":
            raise HttpError(503, "PR09", decision.detail)
        raise HttpError(503, "PR01", f"no healthy machines for app {app.name}")

    async def _retryable(self, ex: Exchange, exc: UpstreamError, tee: BodyTee, stale_retry: bool) -> bool:
        """Spec rule 5: a connect failure is always retried; after headers went upstream only when the method is
        idempotent and the body was buffered; never once the response started."""
        if ex.started or ex.client_gone:
            return False
        if exc.connect:
            return True
        return ex.head.idempotent and await tee.fill()

    async def _forward(self, ex: Exchange, app: AppRoute, machine: MachineRoute, headers: h.Headers,
                       tee: BodyTee, replays: int) -> ForwardResult:
        conc_type = app.concurrency.type
        self._count_connection(ex.conn, machine.id, conc_type)
        self.load.add(self.load.requests, machine.id, 1)

        request_id = headers_request_id(headers)

        def on_head(resp: h.ResponseHead) -> bool:
            return self.response_headers(resp, request_id)

        key = self.resolve(machine)
        try:
            # A small response to an idempotent request is held until complete: if the machine dies before
            # that, nothing reached the client and the request is retried elsewhere (spec rule 5).
            hold = HOLD_LIMIT if ex.head.idempotent else 0
            result = await forward(ex, self.pool, key, headers, tee, on_head=on_head, timeouts=self.timeouts,
                                   hold=hold)
        except UpstreamError as exc:
            if exc.connect:
                self.metrics.inc("sixpn_edge_proxy_errors_total", code="PR04")
            raise
        finally:
            self.load.add(self.load.requests, machine.id, -1)
        if not result.reused:
            self.metrics.observe("sixpn_edge_upstream_connect_seconds", result.connect_time)
            self.rtt.sample(machine.host, result.connect_time)
        if result.discarded and replays >= MAX_REPLAYS:
            raise HttpError(508, "PR08", f"more than {MAX_REPLAYS} chained fly-replay hops")
        return result

    def response_headers(self, resp: h.ResponseHead, request_id: bytes) -> bool:
        """Rewrite a response head (spec "Headers added"); False: fly-replay, discard and replay it."""
        if resp.status != 101 and resp.header(b"fly-replay") is not None:
            return False  # the body is discarded and the request replayed (spec "fly-replay")
        kept: h.Headers = []
        via = b""
        for k, v in resp.headers:
            if k == b"via":
                via = via + b", " + v if via else v
            elif k != b"server" and k != b"fly-request-id":
                kept.append((k, v))
        kept += [(b"server", self.server_name), (b"via", via + b", " + self.via if via else self.via),
                 (b"fly-request-id", request_id)]
        resp.headers = kept
        return True

    def _parse_replay(self, result: ForwardResult) -> Replay:
        assert result.head is not None
        value = (result.head.header(b"fly-replay") or b"").decode("latin-1")
        try:
            return parse_replay(value)
        except ReplayError as exc:
            raise HttpError(502, "PR08", str(exc)) from None

    def _replay_app(self, app: AppRoute, replay: Replay) -> AppRoute:
        if not replay.app or replay.app == app.name:
            return app
        other = self.table.apps.get(replay.app)
        if other is None or other.network != app.network:
            raise HttpError(502, "PR08", f"fly-replay to app {replay.app!r}: not an app in the same network")
        return other

    def _count_connection(self, conn: ServerConnection, machine_id: str, kind: str) -> None:
        """`connections` mode: a client connection counts on the machine its latest request went to."""
        if kind != "connections" or conn.closed:
            return  # a gone client's request forwarded anyway (queued, replayed): `connection_closed` uncounted it
        before = conn.state.get("machine")
        if before == machine_id:
            return
        if before is not None:
            self.load.add(self.load.connections, before, -1)
        conn.state["machine"] = machine_id
        self.load.add(self.load.connections, machine_id, 1)

    def connection_closed(self, conn: ServerConnection) -> None:
        self.connections.discard(conn)
        self._new.pop(conn, None)
        machine = conn.state.pop("machine", None)
        if machine is not None:
            self.load.add(self.load.connections, machine, -1)
        client = conn.state.pop("client", None)
        if client is not None:
            count = self.clients[client] - 1
            assert count >= 0, f"client {client}: connections counted below zero"
            if count:
                self.clients[client] = count
            else:
                del self.clients[client]

    def connection_opened(self, conn: ServerConnection) -> None:
        client = client_key(conn.peer[0])
        count = self.clients.get(client, 0)
        if count >= self.config.max_connections_per_client:
            # One client cannot hold the worker's connections: everyone else keeps theirs (Slowloris, floods).
            self.metrics.inc("sixpn_edge_proxy_errors_total", code="PH07")
            conn.abort()
            return
        if len(self.connections) >= self.config.max_connections and not self._evict_new():
            # Bounded per worker: a flood of connections cannot exhaust memory or file descriptors.
            self.metrics.inc("sixpn_edge_proxy_errors_total", code="PH04")
            conn.abort()
            return
        self.clients[client] = count + 1
        conn.state["client"] = client
        self.connections.add(conn)
        self._new[conn] = None
        conn.on_reject = self._rejected

    def _evict_new(self) -> bool:
        """At `max_connections`: close the oldest connection that is still waiting for its first request head (a
        Slowloris holds new connections idle or trickling, from as many addresses as it has), so held new
        connections cannot shut everyone else out; False when every open connection has sent a request."""
        new = self._new
        while new:
            conn = next(iter(new))
            del new[conn]
            if conn.awaiting_first_head and not conn.closed:
                self.metrics.inc("sixpn_edge_proxy_errors_total", code="PH08")
                self.connections.discard(conn)  # its slot is the new one's now; `connection_closed` follows
                conn.abort()
                return True
        return False

    def _rejected(self, conn: ServerConnection, exc: HttpError) -> None:
        self.metrics.inc("sixpn_edge_proxy_errors_total", code=exc.code)
        self._log({"ts": round(time.time(), 3), "client": conn.peer[0], "status": exc.status, "error": exc.code,
                   "detail": exc.detail})

    # -- the fast path (see `fastpath`) -------------------------------------------------------------------

    def fast(self, ex: Exchange) -> bool:
        """Start `ex` on the fast path; False (before anything was sent or counted) leaves it to `handle`."""
        return fastpath.start(self, ex)

    # -- headers (spec "Headers added") ---------------------------------------------------------------

    def _request_headers(self, ex: Exchange, request_id: str, src: str, preferred_unavailable: bool) -> h.Headers:
        client_ip = ex.client_addr[0]
        if client_ip.startswith("::ffff:"):
            client_ip = client_ip[7:]
        ip = client_ip.encode()
        # One pass: drop hop-by-hop and edge-owned fields (and their `_` spellings), collect the ones we append to.
        drop = fields.DROPPED
        named = h.connection_tokens(ex.head.headers)
        if named:
            drop = drop | named
        headers: h.Headers = []
        xff: list[bytes] = []
        via: list[bytes] = []
        has_host = False
        for k, v in ex.head.headers:
            if k in drop:
                continue
            if k == b"x-forwarded-for":
                xff.append(v)
            elif k == b"via":
                via.append(v)
            else:
                has_host = has_host or k == b"host"
                headers.append((k, v))
        port = str(ex.local_port).encode()
        tls = ex.scheme == "https"
        xff.append(ip)
        via.append(self.via)
        headers += [
            (b"fly-client-ip", ip),
            (b"x-forwarded-for", b", ".join(xff)),
            (b"x-forwarded-proto", b"https" if tls else b"http"),
            (b"x-forwarded-port", port),
            (b"x-forwarded-ssl", b"on" if tls else b"off"),
            (b"fly-forwarded-port", port),
            (b"fly-region", self.region_bytes),
            (b"via", b", ".join(via)),
            (b"fly-request-id", request_id.encode()),
        ]
        if not has_host and ex.head.host:
            headers.append((b"host", ex.head.host))
        if src:
            headers.append((b"fly-replay-src", src.encode()))
        if preferred_unavailable:
            headers.append((b"fly-preferred-instance-unavailable", b"true"))
        return headers

    # -- after each request ----------------------------------------------------------------------------

    def finish(self, ex: Exchange, request_id: str, info: dict[str, object], started: float,
               now: float = 0.0) -> None:
        elapsed = (now or time.monotonic()) - started
        app = str(info.get("app") or "")
        status = ex.status or 499
        keys = self._metric_keys.get((app, status))
        if keys is None:  # label tuples built once per (app, status), not per request
            if len(self._metric_keys) > 4096:
                self._metric_keys.clear()
            keys = self._metric_keys[(app, status)] = (
                (("app", app), ("region", self.region), ("status", str(status))), (("app", app),))
        self.metrics.inc_key("sixpn_edge_requests_total", keys[0])
        self.metrics.observe_key("sixpn_edge_request_seconds", elapsed, keys[1])
        if self.access_log is None:
            return
        self._log({
            "ts": round(time.time(), 3), "id": request_id, "client": ex.client_addr[0],
            "method": ex.head.method.decode("latin-1"), "host": h.host_name(ex.head.host),
            "path": ex.head.target.decode("latin-1")[:200], "status": status, "app": app,
            "machine": info.get("machine", ""), "machine_region": info.get("region", ""), "edge": self.region,
            "ms": round(elapsed * 1000, 2), "bytes": ex.sent_bytes, "retries": info.get("retries", 0),
            "replays": info.get("replays", 0), "error": ex.error_code,
        })

    def finish_lane(self, flight: Flight, status: int, sent: int, now: float) -> None:
        """`finish` for a request answered on the lane (no Exchange): the same metrics and log record."""
        route = flight.route
        key = route.counts.get(status)
        if key is None:
            key = route.counts[status] = (("app", route.app.name), ("region", self.region), ("status", str(status)))
        self.metrics.inc_key("sixpn_edge_requests_total", key)
        elapsed = now - flight.started
        row = route.row
        if row is None:
            self.metrics.observe("sixpn_edge_request_seconds", elapsed, app=route.app.name)
            route.row = self.metrics.hists["sixpn_edge_request_seconds"][(("app", route.app.name),)]
        else:
            row[bisect.bisect_left(BUCKETS, elapsed)] += 1  # `Metrics.observe_key` on the row it would find
            row[-1] += elapsed
        if self.access_log is None:
            return
        target = flight.kept.split(b" ", 2)[1]
        self._log({
            "ts": round(time.time(), 3), "id": flight.rid.decode(), "client": flight.conn.peer[0],
            "method": flight.method.decode(), "host": h.host_name(flight.host),
            "path": target.decode("latin-1")[:200], "status": status, "app": route.app.name,
            "machine": flight.machine.id, "machine_region": flight.machine.region, "edge": self.region,
            "ms": round(elapsed * 1000, 2), "bytes": sent, "retries": 0, "replays": 0, "error": "",
        })

    def _log(self, record: dict[str, object]) -> None:
        if self.access_log is not None:
            self.access_log.write(json.dumps(record) + "\n")

    def publish_gauges(self) -> None:
        m = self.metrics
        for name in ("sixpn_edge_machine_load", "sixpn_edge_machine_healthy", "sixpn_edge_host_rtt_ms",
                     "sixpn_edge_host_rtt_samples"):
            m.clear_gauge(name)
        for app in self.table.apps.values():
            kind = app.concurrency.type
            for machine in app.machines:
                if not machine.started:
                    continue
                m.set("sixpn_edge_machine_load", self.load.load(machine.id, kind), app=app.name, machine=machine.id,
                      type=kind)
                m.set("sixpn_edge_machine_healthy", float(self.health.healthy(machine.id)), app=app.name,
                      machine=machine.id, region=machine.region)
                m.set("sixpn_edge_host_rtt_ms", self.rtt.rtt(machine.host), host=machine.host)
                m.set("sixpn_edge_host_rtt_samples", self.rtt.samples.get(machine.host, 0), host=machine.host)
        m.set("sixpn_edge_open_connections", len(self.connections))


def headers_request_id(headers: h.Headers) -> bytes:
    return h.get(headers, b"fly-request-id") or b""


ProxyFactory = Callable[[], ServerConnection]


def client_key(ip: str) -> str:
    """Whose connection this is, for `max_connections_per_client`: an IPv4 address, or an IPv6 address's /64
    (one subscriber's usual allocation: per address, a single host could take 2^64 of them)."""
    if ip.startswith("::ffff:"):
        return ip[7:]
    if ":" not in ip:
        return ip
    try:
        return ipaddress.IPv6Address(ip.partition("%")[0]).exploded[:19]
    except ValueError:
        return ip
