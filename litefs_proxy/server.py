"""The HTTP data path: edge_proxy's HTTP/1.1 machinery (server Protocol, upstream pool, streaming forwarder)
driven by the pure decisions of `classify`, with the mount watched by one shared `MountWatcher`.

Responses the proxy makes itself are LiteFS's (Go's `http.Error`): `text/plain; charset=utf-8`,
`X-Content-Type-Options: nosniff`, the message plus a newline. Everything else streams through, one client
write per upstream chunk, so server-sent events arrive one by one; header names both ways take Go's canonical
form and a response without `Date` gets one, as LiteFS's Go server does. The front end is Go-like
(`frontend.GoServerConnection`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path

from edge_proxy.errors import HttpError, UpstreamError
from edge_proxy.http1 import (
    BodyTee,
    Exchange,
    Headers,
    ResponseHead,
    ServerConnection,
    ServerLimits,
    Timeouts,
    UpstreamConnection,
    UpstreamPool,
    connection_tokens,
    forward,
    get_all,
    strip_hop_by_hop,
)
from edge_proxy.http1.client import Key
from edge_proxy.http1.forward import FRAMING, REQUEST_OWN
from edge_proxy.http1.head import HOP_BY_HOP
from litefs_proxy.classify import (
    RW_COOKIE,
    Kind,
    RegionAction,
    Route,
    WriteAction,
    classify,
    decide_region,
    decide_write,
    forward_address,
    health_ok,
    parse_window,
    read_wait,
    window_cookie,
)
from litefs_proxy.config import Endpoint, ProxyConfig, parse_endpoint
from litefs_proxy.cookie import cookie_value, request_txid, set_cookie
from litefs_proxy.errors import ConfigError, MountError
from litefs_proxy.events import Event, EventsClient
from litefs_proxy.frontend import GoServerConnection, canonical, go_limits
from litefs_proxy.mountfiles import read_lag
from litefs_proxy.watcher import MountWatcher

log = logging.getLogger("litefs_proxy")

#: Marks a write a replica forwarded to the primary (forward mode), so it is never forwarded twice.
FORWARDED_HEADER = b"litefs-proxy-forwarded"
#: A request body the proxy does not forward (fly-replay answers) is read and dropped up to this size so the
#: connection can stay open, as Go's server does; a larger one closes the connection instead.
DISCARD_LIMIT = 256 * 1024
RETRY_STEP = 0.1  # LiteFS's dialContextWithRetry sleeps 100 ms between refused connects
#: Response fields edge_proxy's forwarder drops or sets itself: left lower-case so it still recognizes them.
_FORWARDER_OWN = HOP_BY_HOP | FRAMING
#: LiteFS's transport (http/proxy_server.go:115-126): no cap on connections to the target (MaxConnsPerHost
#: unset; the host's file limit is the bound), 100 idle ones kept (MaxIdleConns) for 90 s (IdleConnTimeout).
TARGET_MAX_CONNS = 1 << 30
TARGET_MAX_IDLE = 100
TARGET_IDLE_TIMEOUT = 90.0


def _refused(exc: UpstreamError) -> bool:
    cause = exc.__context__
    if isinstance(cause, ConnectionRefusedError):
        return True
    # asyncio folds several failed addresses (localhost: ::1 and 127.0.0.1) into one plain OSError.
    return isinstance(cause, OSError) and cause.errno is None and f"[Errno {errno.ECONNREFUSED}]" in str(cause)


class BootRetryPool(UpstreamPool):
    """An upstream pool whose connects retry "connection refused" for `retry` seconds: the app may still be
    booting (LiteFS: dialContextWithRetry). Other connect failures fail at once."""

    def __init__(self, retry: float, *, max_per_key: int, max_idle_per_key: int, idle_timeout: float) -> None:
        super().__init__(max_per_key=max_per_key, max_idle_per_key=max_idle_per_key, idle_timeout=idle_timeout)
        self.retry = retry

    async def connect(self, key: Key, connect_timeout: float) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry
        while True:
            try:
                return await super().connect(key, connect_timeout)
            except UpstreamError as exc:
                if not _refused(exc) or loop.time() + RETRY_STEP > deadline:
                    raise
            await asyncio.sleep(RETRY_STEP)


def go_error(ex: Exchange, status: int, message: str, extra: Headers | None = None) -> None:
    """Go's `http.Error(w, message, status)` as LiteFS sends it."""
    headers: Headers = [(b"Content-Type", b"text/plain; charset=utf-8"), (b"X-Content-Type-Options", b"nosniff"),
                        *(extra or [])]
    respond(ex, status, headers, message.encode() + b"\n")


def respond(ex: Exchange, status: int, headers: Headers, body: bytes = b"") -> None:
    """A whole response with Go's field spelling (`Date`, `Content-Length`)."""
    out = [*headers, (b"Date", _date()), (b"Content-Length", str(len(body)).encode())]
    ex.start(status, out, length=None, no_body=True, defer=True)
    if body and ex.head.method != b"HEAD":
        ex.write(body)
    ex.end()


class _Date:
    """Go's http.TimeFormat date, formatted once a second."""

    second = -1
    value = b""


def _date() -> bytes:
    now = int(time.time())
    if _Date.second != now:
        _Date.second, _Date.value = now, formatdate(now, usegmt=True).encode()
    return _Date.value


class LitefsProxy:
    """One proxy: `await start()`, then requests flow until `await close()`.

    `before_cookie` runs right before the position is read for a write's cookie: the in-process mount
    stand-in uses it to publish the commit the app just made (LiteFS's FUSE layer does that synchronously).
    """

    def __init__(self, cfg: ProxyConfig, mount: Path | None, *,
                 before_cookie: Callable[[], object] | None = None, hostname: str = "") -> None:
        self.cfg = cfg
        self.mount = mount
        self.before_cookie = before_cookie
        self.hostname = hostname
        self.watcher = MountWatcher(mount, cfg.db, poll_interval=cfg.poll_interval,
                                    inotify=cfg.watch == "auto") if mount is not None else None
        self.pool = BootRetryPool(cfg.connect_retry, max_per_key=TARGET_MAX_CONNS, max_idle_per_key=TARGET_MAX_IDLE,
                                  idle_timeout=TARGET_IDLE_TIMEOUT)
        self.limits: ServerLimits = go_limits(cfg.read_header_timeout, cfg.idle_timeout, cfg.read_timeout)
        self.timeouts = Timeouts(connect=30.0, first_byte=24 * 3600.0)  # LiteFS has no first-byte limit
        self.target: Key = (cfg.target.host, cfg.target.port)
        self.events: EventsClient | None = None
        self._servers: list[asyncio.Server] = []
        self._conns: set[ServerConnection] = set()
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        if self.watcher is not None:
            self.watcher.start()
            # LiteFS's /events: always when configured (`litefs-url`); from the config's `http.addr` only where
            # inotify cannot see the mount change (FUSE, or `watch: poll`).
            if self.cfg.litefs_url and (not self.cfg.litefs_url_auto or not self.watcher.notify_reliable):
                self.events = EventsClient(self.cfg.litefs_url, self._on_event)
                self.events.start()
        addr = self.cfg.addr
        server = await loop.create_server(self._protocol, addr.host or None, addr.port, reuse_address=True)
        self._servers.append(server)
        self.port = int(server.sockets[0].getsockname()[1])
        log.info("litefs proxy listening on %s, target %s, db %r, mode %s", Endpoint(addr.host, self.port),
                 self.cfg.target, self.cfg.db, self.cfg.mode)
        return self.port

    def _on_event(self, event: Event | None) -> None:
        if self.watcher is None:
            return
        if event is None and self.events is not None:  # (re)connected or lost: changes may have been missed
            self.watcher.set_events_live(self.events.connected)
        if event is None or event.db in ("", self.cfg.db):
            self.watcher.poke()

    def _protocol(self) -> ServerConnection:
        return GoServerConnection(self.handle, self.limits, on_open=self._conns.add, on_close=self._conns.discard)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for conn in list(self._conns):
            conn.start_drain()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self.events is not None:
            await self.events.close()
        if self.watcher is not None:
            self.watcher.close()
        self.pool.close()

    # -- the request flow (spec order) ------------------------------------------------------------------

    async def handle(self, ex: Exchange) -> None:
        """Go's server timeouts around the flow: `read-timeout` bounds reading the whole request (body too),
        `write-timeout` the time until the response is written; past either the connection is closed, as Go
        does. Upgraded (tunnelled) connections are exempt from the write timeout."""
        loop = asyncio.get_running_loop()
        deadline = None
        if self.cfg.read_timeout > 0 and ex.head.has_body:
            deadline = loop.call_later(self.cfg.read_timeout, self._read_deadline, ex)
        try:
            if self.cfg.write_timeout > 0 and not ex.head.upgrade:
                timer = asyncio.timeout(self.cfg.write_timeout)
                try:
                    async with timer:
                        await self._route(ex)
                except TimeoutError:
                    if not timer.expired():
                        raise
                    log.info("write timeout (%gs): closing the connection", self.cfg.write_timeout)
                    ex.abort()
            else:
                await self._route(ex)
        finally:
            if deadline is not None:
                deadline.cancel()

    @staticmethod
    def _read_deadline(ex: Exchange) -> None:
        if not ex.body.done:
            log.info("read timeout: request body incomplete, closing the connection")
            ex.abort()

    async def _route(self, ex: Exchange) -> None:
        method = ex.head.method.decode("latin-1")
        route = classify(method, ex.head.target.decode("latin-1"), self.cfg)
        if self.cfg.debug:
            log.info("proxy: %s %s: %s", method, ex.head.target.decode("latin-1"), route.kind.value)
        if self.cfg.mode == "primary-region":
            await self._region(ex, route)
        elif route.kind is Kind.PASSTHROUGH:
            await self._to_target(ex, cookie=False)
        elif route.kind is Kind.HEALTH:
            self._health(ex)
        elif route.kind is Kind.READ:
            await self._read(ex)
        else:
            await self._write(ex, route)

    def _health(self, ex: Exchange) -> None:
        lag = None
        if self.mount is not None:
            try:
                lag = read_lag(self.mount)
            except MountError as exc:
                log.warning("%s", exc)
        if health_ok(lag, self.cfg.max_lag):
            respond(ex, 200, [(b"Content-Type", b"text/plain; charset=utf-8")], b"OK\n")
        else:
            go_error(ex, 503, "Replication lag exceeded")

    async def _read(self, ex: Exchange) -> None:
        assert self.watcher is not None
        txid = request_txid(self._cookies(ex))
        wait_for = read_wait(txid, self.watcher.pos()) if txid else 0
        if wait_for and not await self.watcher.wait_pos(wait_for, self.cfg.txid_timeout):
            if self.cfg.debug:
                log.info("proxy: %s: requires txid %016x, proxy timeout", ex.head.target.decode("latin-1"), txid)
            go_error(ex, 504, "Proxy timeout")
            return
        await self._to_target(ex, cookie=False)

    async def _write(self, ex: Exchange, route: Route) -> None:
        assert self.watcher is not None
        role, primary = self.watcher.role()
        if role == "unknown":
            role, primary = await self.watcher.wait_role(self.cfg.primary_redirect_timeout)
        if self.cfg.mode == "forward" and ex.head.header(FORWARDED_HEADER) is not None and role != "primary":
            # Forwarded by a replica that thought we were the primary: never forward a write twice.
            await self._discard_body(ex)
            go_error(ex, 503, "Proxy error: no primary available")
            return
        action = decide_write(role, self.cfg.mode)
        if action is WriteAction.LOCAL:
            await self._to_target(ex, cookie=route.cookie)
        elif action is WriteAction.WAIT or primary is None:
            await self._discard_body(ex)
            go_error(ex, 503, "Proxy error: no primary available")
        elif action is WriteAction.REPLAY:
            await self._replay(ex, b"instance=" + primary.encode())
        else:
            await self._to_primary(ex, primary)

    async def _replay(self, ex: Exchange, value: bytes) -> None:
        """Answer with only `fly-replay` (status 200, empty body, as LiteFS's handler leaves it)."""
        await self._discard_body(ex)
        respond(ex, 200, [(b"Fly-Replay", value)])

    async def _discard_body(self, ex: Exchange) -> None:
        """Go's server after a handler that did not read the body: up to 256 KiB is read and dropped so the
        connection can be kept; more, or a 100-continue body never asked for, closes it (`Connection: close`)."""
        head = ex.head
        if not head.has_body:
            return
        if head.expect_continue and not ex.body.received:
            ex.close_after = True
            return
        if head.framing == "length" and head.content_length > DISCARD_LIMIT:
            ex.close_after = True
            return
        seen = 0
        while seen <= DISCARD_LIMIT and (data := await ex.body.read()):
            seen += len(data)
        if not ex.body.done:
            ex.close_after = True

    async def _to_primary(self, ex: Exchange, primary: str) -> None:
        """Forward mode: proxy the write to the primary's proxy over 6PN; it sets the cookie."""
        address = forward_address(self.cfg.forward_target, primary, self.cfg.addr.port or self.port)
        try:
            endpoint = parse_endpoint(address, "proxy.forward-target")
        except ConfigError:
            go_error(ex, 502, f"Proxy error: invalid primary address {address!r}")
            return
        headers = [*self._request_headers(ex), (FORWARDED_HEADER, (self.hostname or "replica").encode())]
        await self._forward(ex, (endpoint.host, endpoint.port), headers, self._go_head)

    async def _to_target(self, ex: Exchange, *, cookie: bool, extra_cookie: str = "") -> None:
        def on_head(head: ResponseHead) -> bool:
            self._go_head(head)
            if cookie:
                value = self._position_cookie()
                if value:
                    head.headers.insert(0, (b"Set-Cookie", value.encode()))
            if extra_cookie:
                head.headers.insert(0, (b"Set-Cookie", extra_cookie.encode()))
            return True

        await self._forward(ex, self.target, self._request_headers(ex), on_head)

    def _request_headers(self, ex: Exchange) -> Headers:
        """The client's fields for the app: hop-by-hop and framing dropped (the forwarder frames), names in
        Go's canonical form (LiteFS's server parses them so and its transport writes them so)."""
        marker = self.cfg.mode == "forward"  # the loop-guard marker is ours only in forward mode
        return [(canonical(k), v) for k, v in strip_hop_by_hop(ex.head.headers)
                if k not in REQUEST_OWN and not (marker and k == FORWARDED_HEADER)]

    @staticmethod
    def _go_head(head: ResponseHead) -> bool:
        """The app's response head as LiteFS's Go server passes it on: canonical names (those the forwarder
        drops or sets stay as they are, so it still knows them) and a `Date` when the app sent none."""
        named = connection_tokens(head.headers)
        own = _FORWARDER_OWN | named if named else _FORWARDER_OWN
        has_date = False
        out: Headers = []
        for k, v in head.headers:
            if k not in own:
                k = canonical(k)
                has_date = has_date or k == b"Date"
            out.append((k, v))
        if not has_date:
            out.append((b"Date", _date()))
        head.headers = out
        return True

    def _position_cookie(self) -> str:
        """LiteFS sets the cookie from the position once the response headers arrived (after the commit)."""
        if self.watcher is None:
            return ""
        if self.before_cookie is not None:
            try:
                self.before_cookie()
            except Exception:  # the stand-in failing must not fail the app's response
                log.exception("mount sync before the cookie failed")
        pos = self.watcher.pos()
        if pos is None:
            return ""
        return set_cookie(pos.txid, time.time(), self.cfg.cookie_expiry)

    async def _forward(self, ex: Exchange, key: Key, headers: Headers,
                       on_head: Callable[[ResponseHead], bool]) -> None:
        tee = BodyTee(ex, 1 << 20)
        for attempt in range(2):
            try:
                await forward(ex, self.pool, key, headers, tee, on_head=on_head, timeouts=self.timeouts)
                return
            except UpstreamError as exc:
                # A pooled connection the app had closed: safe to resend once if the body is all in hand.
                if attempt == 0 and exc.stale and tee.replayable and not ex.started:
                    continue
                if ex.started:
                    ex.abort()
                    return
                go_error(ex, 502, "Proxy error: " + _go_dial_error(key, exc))
                return
            except HttpError as exc:
                if ex.started:
                    ex.abort()
                    return
                go_error(ex, exc.status, "Proxy error: " + exc.detail)
                return

    # -- primary-region mode ---------------------------------------------------------------------------

    async def _region(self, ex: Exchange, route: Route) -> None:
        if route.kind is Kind.HEALTH:
            self._health(ex)
            return
        now = time.time()
        window = parse_window(cookie_value(self._cookies(ex), RW_COOKIE))
        action = decide_region(route, self.cfg.region, self.cfg.primary_region,
                               replayed=ex.head.header(b"fly-replay-src") is not None, window_until=window, now=now)
        if action is RegionAction.REPLAY_REGION:
            await self._replay(ex, b"region=" + self.cfg.primary_region.encode())
        elif action is RegionAction.LOCAL_WITH_WINDOW:
            await self._to_target(ex, cookie=False, extra_cookie=window_cookie(now, self.cfg.rw_window))
        else:
            await self._to_target(ex, cookie=False)

    @staticmethod
    def _cookies(ex: Exchange) -> list[str]:
        return [v.decode("latin-1") for v in get_all(ex.head.headers, b"cookie")]


def _go_dial_error(key: Key, exc: UpstreamError) -> str:
    """The reason in Go's words where we can (`dial tcp 127.0.0.1:8081: connect: connection refused`)."""
    host, port = key
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.connect:
        if _refused(exc):
            return f"dial tcp {where}: connect: connection refused"
        text = str(exc)
        if text.endswith("timed out"):
            return f"dial tcp {where}: i/o timeout"
        return f"dial tcp {where}: {text.split(': ', 1)[-1]}"
    return str(exc)


__all__ = ["FORWARDED_HEADER", "BootRetryPool", "LitefsProxy", "go_error"]
