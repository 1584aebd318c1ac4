"""Running the edge: listeners (plain + TLS, SO_REUSEPORT), the catalog follower, checks, metrics endpoint,
graceful drain on SIGTERM, and `--workers N` processes sharing the listening ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO

import uvloop

from catalog import Catalog, Follower, NotFound, State
from catalog.private import open_append_text
from edge_proxy.config import ConfigError, ProxyConfig, parse_hostport
from edge_proxy.h2server import AlpnDispatch, H2Server
from edge_proxy.health import Checker
from edge_proxy.http1.server import Exchange, ServerConnection, ServerLimits
from edge_proxy.metrics import Metrics
from edge_proxy.proxy import EdgeProxy
from edge_proxy.table import Resolver, default_resolver, override_resolver
from edge_proxy.tls import load_sni_context

log = logging.getLogger("edge_proxy")


def resolve_region(catalog: Catalog, config: ProxyConfig) -> str:
    if config.host:
        try:
            return catalog.host(config.host).region
        except NotFound:
            raise ConfigError(f"host {config.host!r} is not in the catalog") from None
    if not config.region:
        raise ConfigError("give --host (a host in the catalog) or --region")
    return config.region


def make_resolver(config: ProxyConfig) -> Resolver:
    return override_resolver(dict(config.upstream_override)) if config.upstream_override else default_resolver


def bind(address: str, reuse_port: bool, listen: bool = True) -> socket.socket:
    host, port = parse_hostport(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {address}: {exc.strerror}") from None
    if listen:
        sock.listen(1024)
    sock.setblocking(False)
    return sock


class EdgeService:
    """One worker: an EdgeProxy fed from the catalog, behind its listening sockets."""

    def __init__(self, config: ProxyConfig, catalog: Catalog, *, resolve: Resolver | None = None,
                 access_log: IO[str] | None = None, metrics_dump: Path | None = None) -> None:
        self.config = config
        self.catalog = catalog
        self.region = resolve_region(catalog, config)
        self.proxy = EdgeProxy(config, self.region, resolve or make_resolver(config), access_log=access_log)
        self.follower = Follower(catalog)
        self.proxy.update(self.follower.state)
        self.checker = Checker(self.proxy.health, self.proxy.rtt, self.proxy.resolve, config.rtt_interval)
        self.checker.table = self.proxy.table
        self.limits = ServerLimits(max_head_bytes=config.max_head_bytes, header_timeout=config.header_timeout,
                                   idle_timeout=config.idle_timeout, body_timeout=config.body_timeout,
                                   first_head_timeout=config.first_head_timeout)
        self.servers: list[asyncio.Server] = []
        self.addresses: list[tuple[str, int]] = []
        self.metrics_dump = metrics_dump
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    def _on_change(self, state: State, _changes: object) -> None:
        self.proxy.update(state)
        self.checker.table = self.proxy.table

    def _factory(self, scheme: str) -> Callable[[], asyncio.Protocol]:
        handler: Callable[[Exchange], Awaitable[None]] = self.proxy.handle

        def make() -> ServerConnection:
            conn = ServerConnection(handler, self.limits, scheme=scheme, on_open=self.proxy.connection_opened,
                                    on_close=self.proxy.connection_closed)
            conn.fast = self.proxy.fast
            if self.config.lane:
                conn.lane = self.proxy.lane.take
            return conn

        def make_h2() -> ServerConnection:
            return H2Server(handler, self.limits, scheme=scheme, on_open=self.proxy.connection_opened,
                            on_close=self.proxy.connection_closed)

        if scheme == "https" and self.config.http2:
            return lambda: AlpnDispatch(make, make_h2)
        return make

    async def start(self, sockets: list[tuple[socket.socket, bool]] | None = None) -> None:
        """Listen (on given sockets, else on the configured addresses) and start the background loops."""
        loop = asyncio.get_running_loop()
        reuse = self.config.workers > 1
        if sockets is None:
            sockets = [(bind(a, reuse), False) for a in self.config.listen]
            sockets += [(bind(a, reuse), True) for a in self.config.tls_listen]
        ssl_ctx = load_sni_context(self.config.cert_dir, self.config.http2) if any(tls for _, tls in sockets) else None
        for sock, tls in sockets:
            # A TLS handshake comes before the connection is ours to count: it gets first_head_timeout too.
            server = await loop.create_server(
                self._factory("https" if tls else "http"), sock=sock, backlog=1024, ssl=ssl_ctx if tls else None,
                ssl_handshake_timeout=self.config.first_head_timeout if tls else None)
            self.servers.append(server)
            name = sock.getsockname()
            self.addresses.append((str(name[0]), int(name[1])))
        self._tasks.append(loop.create_task(self.follower.run(self._on_change)))
        self._tasks.append(loop.create_task(self.checker.run()))
        self._tasks.append(loop.create_task(self._gauges()))

    async def _gauges(self) -> None:
        while True:
            self.proxy.publish_gauges()
            if self.metrics_dump is not None:
                tmp = self.metrics_dump.with_suffix(".tmp")
                tmp.write_text(json.dumps(self.proxy.metrics.snapshot()))
                tmp.replace(self.metrics_dump)
            await asyncio.sleep(1.0)

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let in-flight requests finish, close idle connections (then force after timeout)."""
        for server in self.servers:
            server.close()
        for conn in list(self.proxy.connections):
            conn.start_drain()
        deadline = time.monotonic() + timeout
        while self.proxy.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.proxy.connections):
            conn.abort()
        await self.stop()

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for conn in list(self.proxy.connections):
            conn.abort()
        self.proxy.pool.close()


async def metrics_server(address: str, render: Callable[[], str]) -> asyncio.Server:
    """A tiny endpoint: GET /metrics in the Prometheus text format."""
    host, port = parse_hostport(address, 9091)

    async def handle(ex: Exchange) -> None:
        if ex.head.target.split(b"?")[0] != b"/metrics":
            ex.respond(404, [(b"content-type", b"text/plain")], b"see /metrics\n")
            return
        ex.respond(200, [(b"content-type", b"text/plain; version=0.0.4")], render().encode())

    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: ServerConnection(handle, ServerLimits()), host, port)


async def run_worker(config: ProxyConfig, state_dir: Path, metrics_dump: Path | None = None,
                     ready: Callable[[EdgeService], None] | None = None) -> None:
    """One worker process: serve until SIGTERM/SIGINT, then drain."""
    access = _open_log(config.access_log)
    with Catalog(state_dir) as catalog:
        service = EdgeService(config, catalog, access_log=access, metrics_dump=metrics_dump)
        await service.start()
        metrics = None
        if config.metrics_listen and metrics_dump is None:
            try:
                metrics = await metrics_server(config.metrics_listen, service.proxy.metrics.render)
            except OSError as exc:
                log.warning("metrics endpoint %s not served: %s", config.metrics_listen, exc.strerror)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("edge proxy (region %s) listening on %s", service.region, service.addresses)
        # What exists now (catalog state, modules) lives as long as the worker: keep it out of every cyclic
        # GC pass, and collect the young generation less often (each request allocates a few dozen objects).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        if ready is not None:
            ready(service)
        await stop.wait()
        log.info("draining")
        if metrics is not None:
            metrics.close()
        await service.drain(config.drain_timeout)


def _open_log(target: str) -> IO[str] | None:
    if target == "-":
        return sys.stderr
    if not target:
        return None
    return open_append_text(target)  # 0600: paths, query strings and client addresses


def serve(config: ProxyConfig, state_dir: Path) -> int:
    """`sixpn proxy serve`: one worker in this process, or a supervisor of `workers` processes."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with Catalog(state_dir) as catalog:
        resolve_region(catalog, config)  # fail early, in the parent
    if config.workers <= 1:
        uvloop.run(run_worker(config, state_dir))
        return 0
    for address in (*config.listen, *config.tls_listen):
        bind(address, reuse_port=True, listen=False).close()  # a busy port fails here, once, not in N children
    if config.tls_listen:
        load_sni_context(config.cert_dir)
    return _supervise(config, state_dir)


def _supervise(config: ProxyConfig, state_dir: Path) -> int:
    dump_dir = Path(tempfile.mkdtemp(prefix="sixpn-edge-"))
    children: dict[int, int] = {}
    born: dict[int, float] = {}
    quick_deaths = 0

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # child: its own event loop, its own SO_REUSEPORT sockets
            code = 0
            try:
                uvloop.run(run_worker(config, state_dir, dump_dir / f"w{index}.json"))
            except BaseException:
                log.exception("worker %d failed", index)
                code = 1
            os._exit(code)
        children[pid] = index
        born[index] = time.monotonic()

    for i in range(config.workers):
        spawn(i)

    async def main() -> None:
        nonlocal quick_deaths
        merged = Metrics

        def render() -> str:
            total = merged()
            for path in dump_dir.glob("w*.json"):
                with contextlib.suppress(OSError, ValueError):
                    total.merge(json.loads(path.read_text()))
            return total.render()

        server = None
        failed.clear()
        if config.metrics_listen:
            try:
                server = await metrics_server(config.metrics_listen, render)
            except OSError as exc:
                log.warning("metrics endpoint %s not served: %s", config.metrics_listen, exc.strerror)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            for pid in list(children):
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done and not stop.is_set():
                    index = children.pop(pid)
                    quick_deaths = quick_deaths + 1 if time.monotonic() - born[index] < 2.0 else 0
                    if quick_deaths > 5:
                        log.error("workers keep dying at start; giving up")
                        failed.set()
                        stop.set()
                        break
                    log.warning("worker %d exited; restarting", index)
                    await asyncio.sleep(min(5.0, 0.25 * 2 ** quick_deaths))
                    spawn(index)
        if server is not None:
            server.close()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + config.drain_timeout + 5
        while children and time.monotonic() < deadline:
            for pid in list(children):
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    children.pop(pid)
            await asyncio.sleep(0.05)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    failed = asyncio.Event()
    try:
        uvloop.run(main())
    finally:
        for path in dump_dir.glob("*"):
            path.unlink()
        dump_dir.rmdir()
    return 1 if failed.is_set() else 0
