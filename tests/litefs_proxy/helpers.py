"""Loopback fixtures: a tiny upstream app on port 0, a raw HTTP/1.1 client, a temp-dir mount."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools

from edge_proxy.http1 import Exchange, ServerConnection, ServerLimits
from litefs_proxy.config import Endpoint, ProxyConfig
from litefs_proxy.mountfiles import NO_PRIMARY_LAG_MS, Pos, format_lag, format_pos, write_atomic
from litefs_proxy.server import LitefsProxy

Handler = Callable[[Exchange], Awaitable[None]]


@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[bytes, bytes]]


@dataclass
class Upstream:
    port: int
    seen: list[Seen] = field(default_factory=list)


async def default_app(ex: Exchange) -> None:
    body = b""
    while data := await ex.body.read():
        body += data
    ex.respond(200, [(b"content-type", b"text/plain"), (b"x-app", b"1")], b"app:" + str(len(body)).encode())


@asynccontextmanager
async def upstream(app: Handler = default_app, port: int = 0) -> AsyncIterator[Upstream]:
    state = Upstream(0)

    async def handler(ex: Exchange) -> None:
        state.seen.append(Seen(ex.head.method.decode(), ex.head.target.decode(), list(ex.head.headers)))
        await app(ex)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ServerConnection(handler, ServerLimits()), "127.0.0.1", port)
    state.port = int(server.sockets[0].getsockname()[1])
    try:
        yield state
    finally:
        server.close()


def make_cfg(target_port: int, **kw: Any) -> ProxyConfig:
    base = ProxyConfig(addr=Endpoint("127.0.0.1", 0), target=Endpoint("127.0.0.1", target_port), db="db",
                       connect_retry=0.3, txid_timeout=5.0, primary_redirect_timeout=5.0)
    return dataclasses.replace(base, **kw)


@asynccontextmanager
async def proxy(cfg: ProxyConfig, mount: Path | None, **kw: Any) -> AsyncIterator[LitefsProxy]:
    p = LitefsProxy(cfg, mount, **kw)
    await p.start()
    try:
        yield p
    finally:
        await p.close()


def as_primary(mount: Path, txid: int = 1) -> None:
    write_atomic(mount / ".lag", format_lag(0))
    (mount / ".primary").unlink(missing_ok=True)
    set_pos(mount, txid)


def as_replica(mount: Path, primary: str = "m-primary", txid: int = 1) -> None:
    write_atomic(mount / ".primary", primary + "\n")
    write_atomic(mount / ".lag", format_lag(12))
    set_pos(mount, txid)


def as_orphan(mount: Path) -> None:
    (mount / ".primary").unlink(missing_ok=True)
    write_atomic(mount / ".lag", format_lag(NO_PRIMARY_LAG_MS))


def set_pos(mount: Path, txid: int) -> None:
    write_atomic(mount / "db-pos", format_pos(Pos(txid, 0xABC)))


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    chunks: list[bytes] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def all(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k.lower() == name]


class _Collector:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.done = False
        self.head_done = False
        self.on_chunk: Callable[[bytes], None] | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        if self.on_chunk is not None:
            self.on_chunk(body)

    def on_message_complete(self) -> None:
        self.done = True


async def request(port: int, method: str, path: str, headers: list[tuple[str, str]] | None = None,
                  body: bytes = b"", *, on_chunk: Callable[[bytes], None] | None = None,
                  timeout: float = 20.0) -> Response:
    """One request on a fresh connection; the response read to its end (or to the close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"{method} {path} HTTP/1.1", "Host: app.test"]
        lines += [f"{k}: {v}" for k, v in headers or []]
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        collector = _Collector()
        collector.on_chunk = on_chunk
        parser = httptools.HttpResponseParser(collector)
        async with asyncio.timeout(timeout):
            while not collector.done:
                data = await reader.read(65536)
                if not data:
                    break
                parser.feed_data(data)
                if method == "HEAD" and collector.head_done:
                    break
        return Response(parser.get_status_code(), collector.headers, b"".join(collector.chunks), collector.chunks)
    finally:
        writer.close()
