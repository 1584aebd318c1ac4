"""Forwarding names outside `.internal` to the configured resolvers, relaying their answer unchanged.

Each forwarded query gets its own connected socket, so the kernel drops datagrams from anyone but the
upstream, and the reply must carry the query's ID (RFC 5452 §9.1 asks for more; the source-port randomness
of a fresh socket is what this adds). The number in flight is capped so a flood cannot grow memory.
"""

from __future__ import annotations

import asyncio
import logging
import struct

log = logging.getLogger("dns6pn.upstream")

Address = tuple[str, int]
DEFAULT_TIMEOUT = 2.0
MAX_IN_FLIGHT = 512


class _OneShot(asyncio.DatagramProtocol):
    def __init__(self, query_id: bytes) -> None:
        self.query_id = query_id
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if data[:2] == self.query_id and len(data) >= 12 and data[2] & 0x80 and not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


class Forwarder:
    def __init__(self, upstreams: list[Address], timeout: float = DEFAULT_TIMEOUT) -> None:
        self.upstreams = list(upstreams)
        self.timeout = timeout
        self.in_flight = 0

    async def forward(self, packet: bytes, tcp: bool) -> bytes | None:
        """The first upstream's reply, or None when none answered (the caller sends SERVFAIL)."""
        if self.in_flight >= MAX_IN_FLIGHT:
            return None
        self.in_flight += 1
        try:
            for upstream in self.upstreams:
                try:
                    ask = self._tcp if tcp else self._udp
                    return await asyncio.wait_for(ask(packet, upstream), self.timeout)
                except (OSError, TimeoutError, asyncio.IncompleteReadError, EOFError) as exc:
                    log.warning("upstream %s:%d failed: %s", upstream[0], upstream[1], exc or type(exc).__name__)
            return None
        finally:
            self.in_flight -= 1

    async def _udp(self, packet: bytes, upstream: Address) -> bytes:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(lambda: _OneShot(packet[:2]), remote_addr=upstream)
        try:
            transport.sendto(packet)
            return await protocol.reply
        finally:
            transport.close()

    async def _tcp(self, packet: bytes, upstream: Address) -> bytes:
        reader, writer = await asyncio.open_connection(upstream[0], upstream[1])
        try:
            writer.write(struct.pack("!H", len(packet)) + packet)
            await writer.drain()
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            return await reader.readexactly(size)
        finally:
            writer.close()
