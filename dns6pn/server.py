"""Thin asyncio adapters around `Engine`: UDP and TCP listeners, upstream relaying, following the catalog.

Listeners are (address, port) pairs, each a UDP socket and a TCP socket on the same port. With `--host`
the set is derived from the catalog and reconciled on every change (a gateway gains `<net>::3` when a
network gets its first peer there). Sockets bind with IP(V6)_FREEBIND so an address the mesh agent has
not put on `lo` yet is not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable
from typing import cast

from catalog import Catalog, Change, Follower, State, addressing
from catalog.errors import CatalogError
from dns6pn import fastudp, wire
from dns6pn.config import Address, ServerConfig
from dns6pn.engine import Engine, Forward
from dns6pn.errors import DnsError
from dns6pn.upstream import Forwarder

log = logging.getLogger("dns6pn")

IPV6_FREEBIND = getattr(socket, "IPV6_FREEBIND", 78)
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
RCVBUF = 4 << 20
POLL_INTERVAL = 0.02

Handler = Callable[[bytes, "str | bytes", bool], "bytes | Forward | None"]


class _Relay:
    """Runs forwarded queries as tasks and sends their reply (or SERVFAIL) back through `send`."""

    def __init__(self, forwarder: Forwarder | None) -> None:
        self.forwarder = forwarder
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self, request: Forward, tcp: bool, send: Callable[[bytes], None]) -> None:
        task = asyncio.get_running_loop().create_task(self._run(request, tcp, send))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, request: Forward, tcp: bool, send: Callable[[bytes], None]) -> None:
        reply = await self.forwarder.forward(request.packet, tcp) if self.forwarder else None
        send(reply if reply is not None else wire.reply(request.packet, wire.SERVFAIL, request.question_end, ra=True))

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, handle: Handler, relay: _Relay) -> None:
        self.handle = handle
        self.relay = relay
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's are not subclasses

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        reply = self.handle(data, str(addr[0]), False)
        transport = self.transport
        if transport is None or reply is None:
            return
        if isinstance(reply, bytes):
            transport.sendto(reply, addr)
        else:
            self.relay.start(reply, False, lambda out: None if transport.is_closing() else transport.sendto(out, addr))

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error: %s", exc)  # e.g. ICMP port unreachable from a client that left


def source_key(peer: str) -> str:
    """Whose TCP connection this is, for `TcpBook`'s per-source limit: a 6PN source's network (its /48: one
    org's machines and peers share it), else an IPv4 address or an IPv6 /64."""
    ip = peer.removeprefix("::ffff:")
    if ":" not in ip:
        return ip
    try:
        exploded = ipaddress.IPv6Address(ip.partition("%")[0]).exploded
    except ValueError:
        return ip
    return exploded[:14] if exploded.startswith("fdaa:") else exploded[:19]


class TcpBook:
    """The open TCP connections of one server, in all and per source (RFC 7766 §6.2.2: a server should limit
    the connections of each client), so one network holding connections cannot take them from another."""

    def __init__(self, total: int, per_source: int) -> None:
        self.total = total
        self.per_source = per_source
        self.open = 0
        self.by_source: dict[str, int] = {}

    def take(self, peer: str) -> str | None:
        """The source's key, counted; None (nothing counted) when it or the server is at its limit."""
        key = source_key(peer)
        count = self.by_source.get(key, 0)
        if self.open >= self.total or count >= self.per_source:
            return None
        self.open += 1
        self.by_source[key] = count + 1
        return key

    def give(self, key: str) -> None:
        count = self.by_source[key] - 1
        assert count >= 0 and self.open > 0
        self.open -= 1
        if count:
            self.by_source[key] = count
        else:
            del self.by_source[key]


class TcpProtocol(asyncio.Protocol):
    """RFC 7766: two-byte length prefix, several queries per connection, replies possibly out of order.

    Timeouts (RFC 7766 §6.2.3, seconds not minutes): a new connection must complete its first query within
    `first_timeout`, and each later one within `idle_timeout` of the previous; only a complete query re-arms
    the clock, so bytes trickled in cannot hold a connection open (Slowloris)."""

    def __init__(self, handle: Handler, relay: _Relay, book: TcpBook, idle_timeout: float = 10.0,
                 first_timeout: float = 3.0) -> None:
        self.handle = handle
        self.relay = relay
        self.book = book
        self.idle_timeout = idle_timeout
        self.first_timeout = first_timeout
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.source: str | None = None  # the key counted in `book`
        self.idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        self.source = self.book.take(self.peer)
        if self.source is None:
            transport.abort()
            return
        self._arm(min(self.first_timeout, self.idle_timeout))

    def _arm(self, delay: float) -> None:
        if self.idle is not None:
            self.idle.cancel()
        transport = self.transport
        if transport is not None:
            self.idle = asyncio.get_running_loop().call_later(delay, transport.close)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        answered = False
        while len(self.buffer) >= 2:
            size = int.from_bytes(self.buffer[:2], "big")
            if len(self.buffer) < 2 + size:
                break
            message = bytes(self.buffer[2 : 2 + size])
            del self.buffer[: 2 + size]
            answered = True
            reply = self.handle(message, self.peer, True)
            if isinstance(reply, bytes):
                self._send(reply)
            elif reply is not None:
                self.relay.start(reply, True, self._send)
        if answered:
            self._arm(self.idle_timeout)

    def _send(self, reply: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(struct.pack("!H", len(reply)) + reply)

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()  # a client that does not read does not get to send more

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.source is not None:
            self.book.give(self.source)
            self.source = None
        if self.idle is not None:
            self.idle.cancel()
        self.transport = None


def _socket(address: Address, kind: socket.SocketKind) -> socket.socket:
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        else:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Listener:
    """One address: a UDP socket (batched reader, or a DatagramProtocol) and a TCP server on the same port."""

    def __init__(self, address: Address, bound: Address, close_udp: Callable[[], None], tcp: asyncio.Server) -> None:
        self.address = address
        self.bound = bound
        self.close_udp = close_udp
        self.tcp = tcp

    async def close(self) -> None:
        self.close_udp()
        self.tcp.close()
        await self.tcp.wait_closed()


async def _serve_udp(sock: socket.socket, handle: Handler, relay: _Relay, max_udp: int) -> Callable[[], None]:
    loop = asyncio.get_running_loop()
    if fastudp.AVAILABLE:
        def defer(request: object, send: Callable[[bytes], None]) -> None:
            assert isinstance(request, Forward)
            relay.start(request, False, send)

        batched = fastudp.BatchedUdp(sock, lambda data, source: handle(data, source, False), defer, max_udp)
        loop.add_reader(sock.fileno(), batched.on_readable)

        def close() -> None:
            batched.close()
            loop.remove_reader(sock.fileno())
            sock.close()
        return close
    udp, _ = await loop.create_datagram_endpoint(lambda: UdpProtocol(handle, relay), sock=sock)
    return udp.close


async def open_listener(address: Address, handle: Handler, relay: _Relay, max_udp: int,
                        tcp_protocol: Callable[[], TcpProtocol]) -> Listener:
    """Bind UDP first; with port 0, TCP takes the port UDP got (retrying if TCP's is taken)."""
    loop = asyncio.get_running_loop()
    for _attempt in range(20):
        try:
            udp_sock = _socket(address, socket.SOCK_DGRAM)
        except OSError as exc:
            raise DnsError(f"cannot bind udp {address[0]} port {address[1]}: {exc.strerror}") from exc
        bound = udp_sock.getsockname()
        try:
            tcp_sock = _socket((address[0], bound[1]), socket.SOCK_STREAM)
        except OSError as exc:
            udp_sock.close()
            if address[1] == 0:
                continue
            raise DnsError(f"cannot bind tcp {address[0]} port {bound[1]}: {exc.strerror}") from exc
        close_udp = await _serve_udp(udp_sock, handle, relay, max_udp)
        tcp = await loop.create_server(tcp_protocol, sock=tcp_sock, backlog=128)
        return Listener(address, (str(bound[0]), int(bound[1])), close_udp, tcp)
    raise DnsError(f"no free port pair for udp and tcp on {address[0]}")


def host_addresses(state: State, host: str, port: int) -> set[Address]:
    """Where the DNS server listens on `host`: fdaa::3 on a worker, `<net>::3` per peered network on a gateway."""
    row = state.hosts.get(host)
    if row is None:
        raise DnsError(f"no host named {host!r} in the catalog")
    if row.role == "worker":
        return {(str(addressing.DNS_ADDRESS), port)}
    if row.role == "gateway":
        nets = {p.network for p in state.peers.values() if p.host == host}
        return {(str(state.networks[n].dns_address), port) for n in nets if n in state.networks}
    raise DnsError(f"host {host!r} is an {row.role}; the DNS server runs on workers and gateways")


class DnsServer:
    """The running server: an engine fed by a catalog follower, and its listeners."""

    def __init__(self, catalog: Catalog, config: ServerConfig) -> None:
        if not config.listen and not config.host:
            raise DnsError("give --listen addresses or a --host to derive them from")
        self.catalog = catalog
        self.config = config
        self.follower = Follower(catalog)
        state = self.follower.state
        fallback = state.hosts[config.host].region if config.host and config.host in state.hosts else None
        if config.host and config.host not in state.hosts:
            raise DnsError(f"no host named {config.host!r} in the catalog")
        self.engine = Engine(
            state, ttl=config.ttl, forwarding=bool(config.upstreams), source_override=config.source_override,
            max_udp=config.max_udp, cache_entries=config.cache_entries, fallback_region=fallback,
        )
        forwarder = Forwarder(list(config.upstreams), config.upstream_timeout) if config.upstreams else None
        self.relay = _Relay(forwarder)
        # One book for every listener: the limits are the server's, not each address's.
        self.tcp_book = TcpBook(config.tcp_max_connections, config.tcp_max_per_source)
        self.listeners: dict[Address, Listener] = {}
        self._follow: asyncio.Task[None] | None = None
        self._reconciling = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def addresses(self) -> list[Address]:
        return sorted(listener.bound for listener in self.listeners.values())

    def desired(self) -> set[Address]:
        if self.config.listen:
            return set(self.config.listen)
        assert self.config.host is not None
        return host_addresses(self.engine.state, self.config.host, self.config.port)

    async def start(self) -> None:
        await self.reconcile()
        self._follow = asyncio.get_running_loop().create_task(self._follow_catalog())

    async def reconcile(self) -> None:
        """Open the listeners that should exist and close the others."""
        async with self._reconciling:
            want = self.desired()
            for address in sorted(set(self.listeners) - want):
                log.info("stop listening on [%s]:%d", *address)
                await self.listeners.pop(address).close()
            for address in sorted(want - set(self.listeners)):
                handle = self._handler_for(address)
                listener = await open_listener(address, handle, self.relay, self.config.max_udp,
                                               functools.partial(self._tcp_protocol, handle))
                self.listeners[address] = listener
                log.info("listening on [%s]:%d (udp, tcp)", *self.listeners[address].bound)

    def _tcp_protocol(self, handle: Handler) -> TcpProtocol:
        config = self.config
        return TcpProtocol(handle, self.relay, self.tcp_book, config.tcp_idle_timeout, config.tcp_first_timeout)

    def _handler_for(self, address: Address) -> Handler:
        """At a network's `::3` only that network's members are answered; elsewhere the source decides."""
        try:
            only = addressing.parse(address[0]).network_id or None
        except CatalogError:
            only = None
        if only is None:
            return self.engine.handle
        handle = self.engine.handle
        return lambda data, source, tcp: handle(data, source, tcp, only)

    async def _follow_catalog(self) -> None:
        while True:
            try:
                changes = self.follower.poll()
                if changes:
                    self._on_change(self.follower.state, changes)
            except (CatalogError, OSError) as exc:
                log.warning("catalog poll failed (retrying): %s", exc)
            except Exception:
                log.exception("catalog poll failed (retrying)")
            await asyncio.sleep(POLL_INTERVAL)

    def _on_change(self, state: State, changes: list[Change]) -> None:
        self.engine.update(state, changes)
        if not self.config.listen and any(c.kind in ("peer", "network", "host") for c in changes):
            task = asyncio.get_running_loop().create_task(self._reconcile_logged())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _reconcile_logged(self) -> None:
        try:
            await self.reconcile()
        except DnsError as exc:
            log.error("%s", exc)

    async def stop(self) -> None:
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow
        await self.relay.close()
        for listener in self.listeners.values():
            await listener.close()
        self.listeners.clear()

    async def __aenter__(self) -> DnsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve_forever(catalog: Catalog, config: ServerConfig) -> None:
    server = DnsServer(catalog, config)
    async with server:
        await asyncio.Event().wait()
