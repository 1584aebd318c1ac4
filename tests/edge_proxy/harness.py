"""Loopback fixtures: fake machines (HTTP servers on 127.0.0.1:0) registered in a temporary catalog, an edge
service in-process reaching them through its upstream override, and raw/simple HTTP clients."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
import struct
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop

from catalog import Catalog
from edge_proxy.config import ProxyConfig
from edge_proxy.http1.server import Exchange, ServerConnection, ServerLimits
from edge_proxy.service import EdgeService

REGIONS = ("gru", "gig", "iad", "sjc")


@dataclass
class Backend:
    """A fake machine: answers by path, records what reached it."""

    name: str
    port: int = 0
    seen: list[Exchange] = field(default_factory=list)
    server: asyncio.Server | None = None
    replay: str = ""  # answer every request with this fly-replay value
    status: int = 200
    fail_next: int = 0  # close this many connections without answering
    refuse_upgrade: bool = False
    replay_first_only: bool = False  # do not replay a request that is itself a replay
    reset_after_head: int = 0  # answer this many requests with a head and part of the body, then an RST

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: ServerConnection(self.handle, ServerLimits()), "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    async def handle(self, ex: Exchange) -> None:
        self.seen.append(ex)
        path = ex.head.target.split(b"?")[0]
        if self.fail_next > 0:
            self.fail_next -= 1
            ex.abort()
            return
        if self.reset_after_head > 0:
            self.reset_after_head -= 1
            await self._reset_after_head(ex)
            return
        if ex.head.upgrade and not self.refuse_upgrade:
            ex.start(101, [(b"connection", b"upgrade"), (b"upgrade", ex.head.upgrade)], length=None, no_body=True)
            ex.tunnel(ex.write_raw, lambda: None)  # echo whatever comes
            return
        if self.replay and not (self.replay_first_only and ex.head.header(b"fly-replay-src") is not None):
            ex.respond(200, [(b"fly-replay", self.replay.encode())], b"replaying")
            return
        if path == b"/stream":
            ex.start(200, [(b"content-type", b"text/plain")], length=None)
            for i in range(5):
                ex.write(b"tick %d\n" % i)
                await ex.drain()
                await asyncio.sleep(0.02)
            ex.end()
            return
        if path == b"/big":
            size = 64 * 1024 * 1024
            ex.start(200, [], length=size)
            block = b"x" * 65536
            for _ in range(size // len(block)):
                ex.write(block)
                await ex.drain()
            ex.end()
            return
        if path == b"/slow":
            await asyncio.sleep(3)
            ex.respond(200, [], b"late\n")
            return
        if path == b"/blob":  # /blob?n=<bytes>: a larger Content-Length body (a slow reader's backpressure)
            query = ex.head.target.partition(b"?")[2]
            size = next((int(v) for k, _, v in (p.partition(b"=") for p in query.split(b"&")) if k == b"n"), 0)
            ex.respond(200, [(b"content-type", b"application/octet-stream")], blob(size))
            return
        if path == b"/health":
            ex.respond(self.status, [], b"ok\n")
            return
        if path == b"/delay":  # a short wait before an ordinary answer (a request in flight for a while)
            await asyncio.sleep(0.3)
            ex.respond(200, [], b"delayed\n")
            return
        if path == b"/split":  # the head and the body in two writes, apart: two reads at the edge
            ex.conn.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 11\r\n\r\n")
            await asyncio.sleep(0.05)
            ex.conn.write(b"split body\n")
            ex.started = ex.finished = True
            return
        if path == b"/via":  # a response that already went through a proxy at the machine's side
            ex.respond(200, [(b"via", b"1.1 app-cache"), (b"server", b"backend")], b"via\n")
            return
        if path == b"/garbage":  # a complete response and bytes after it, in one write
            ex.conn.write(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\nHTTP/1.1 200 OK\r\n\r\n")
            ex.started = ex.finished = True
            return
        body = await ex.body.read_all(64 * 1024 * 1024)
        assert body is not None
        doc = {
            "machine": self.name, "method": ex.head.method.decode(), "target": ex.head.target.decode(),
            "headers": [[k.decode(), v.decode("latin-1")] for k, v in ex.head.headers],
            "body_len": len(body), "body_head": body[:64].decode("latin-1"),
        }
        ex.respond(self.status, [(b"content-type", b"application/json"), (b"server", b"backend")],
                   json.dumps(doc).encode())


    async def _reset_after_head(self, ex: Exchange) -> None:
        """What a machine SIGKILLed mid-response looks like: a head (and a few body bytes) reach the edge, then
        an RST instead of the rest. SO_LINGER 0 makes close() send RST (RFC 9293 §3.6.1 abort)."""
        if ex.head.has_body:
            await ex.body.read_all(1 << 20)
        ex.conn.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 100\r\n\r\npartial")
        await asyncio.sleep(0.1)  # let the edge read the head before the reset
        transport = ex.conn.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ex.started = ex.finished = True
        transport.abort()


def blob(size: int) -> bytes:
    """What /blob?n=<size> answers: a repeating pattern, so a misplaced slice shows."""
    block = bytes(range(256)) * 4
    return (block * (size // len(block) + 1))[:size]


@dataclass
class Lab:
    catalog: Catalog
    service: EdgeService
    backends: dict[str, Backend]
    machines: dict[str, str]  # backend name -> machine id

    @property
    def port(self) -> int:
        return self.service.addresses[0][1]

    def sync(self) -> None:
        """Apply catalog changes now instead of waiting for the follower's poll."""
        self.service.follower.poll()
        self.service.proxy.update(self.service.follower.state)
        self.service.checker.table = self.service.proxy.table


def make_catalog(path: Path, app_config: dict[str, Any] | None = None) -> Catalog:
    cat = Catalog(path)
    cat.create_org("acme")
    config = app_config or {"app": "web", "http_service": {"internal_port": 8080}}
    cat.create_app("web", "acme", config=config)
    cat.create_app("api", "acme", config={"app": "api", "http_service": {"internal_port": 8080}})
    cat.create_org("other")
    cat.create_app("elsewhere", "other", config={"app": "elsewhere", "http_service": {"internal_port": 8080}})
    cat.register_host("edge-gru", "gru", "edge", "192.0.2.1")
    for i, region in enumerate(REGIONS):
        cat.register_host(f"worker-{region}", region, "worker", f"192.0.2.{10 + i}")
    return cat


@contextlib.asynccontextmanager
async def edge_lab(tmp: Path, machines: dict[str, tuple[str, str]], *, app_config: dict[str, Any] | None = None,
                   **config: Any) -> AsyncIterator[Lab]:
    """machines: backend name -> (app, region). Every machine starts 'started'."""
    cat = make_catalog(tmp / "state", app_config)
    backends: dict[str, Backend] = {}
    ids: dict[str, str] = {}
    overrides = []
    try:
        for name, (app, region) in machines.items():
            backend = Backend(name)
            await backend.start()
            backends[name] = backend
            machine = cat.create_machine(app, f"worker-{region}", state="started")
            ids[name] = machine.id
            overrides.append((machine.id, f"127.0.0.1:{backend.port}"))
        settings: dict[str, Any] = {
            "host": "edge-gru", "listen": ("127.0.0.1:0",), "measure_rtt": False, "access_log": "",
            "upstream_override": tuple(overrides), "connect_timeout": 2.0, "queue_timeout": 1.0, **config,
        }
        service = EdgeService(ProxyConfig(**settings), cat)
        await service.start()
        try:
            yield Lab(cat, service, backends, ids)
        finally:
            await service.stop()
    finally:
        for backend in backends.values():
            await backend.stop()
        cat.close()


# -- clients ---------------------------------------------------------------------------------------------

@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    def json(self) -> Any:
        return json.loads(self.body)


async def raw(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    """Send bytes, read until the server closes (or timeout)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            async with asyncio.timeout(timeout):
                while chunk := await reader.read(65536):
                    chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()


async def request(port: int, method: str = "GET", path: str = "/", host: str = "web.sixpn.test",
                  headers: dict[str, str] | None = None, body: bytes = b"") -> Response:
    """One well-formed HTTP/1.1 request on its own connection (Connection: close)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    data = await raw(port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body, timeout=10.0)
    return parse_response(data)


def parse_response(data: bytes) -> Response:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines or not lines[0].startswith("HTTP/"):
        raise AssertionError(f"not an HTTP response: {data[:200]!r}")
    status = int(lines[0].split()[1])
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    hdrs = {k.lower(): v for k, v in headers}
    if hdrs.get("transfer-encoding", "").lower() == "chunked":
        body = dechunk(body)
    return Response(status, headers, body)


def dechunk(data: bytes) -> bytes:
    out = []
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out.append(data[:size])
        data = data[size + 2:]
    return b"".join(out)


AsyncTest = Callable[..., Coroutine[Any, Any, None]]


def aio(fn: AsyncTest) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        uvloop.run(asyncio.wait_for(fn(*args, **kwargs), 30))

    return wrapper
