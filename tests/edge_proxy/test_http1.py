"""HTTP/1.1 behaviour through the edge over loopback: keep-alive, pipelining, chunked/streaming bodies,
100-continue, Upgrade tunnels, HTTP/1.0, 431, timeouts, back-pressure, and a smuggling/malformed corpus that
must be rejected with 400 and never reach a machine."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.edge_proxy.harness import Lab, aio, edge_lab, parse_response, raw

ONE = {"gru1": ("web", "gru")}
H = b"Host: web.sixpn.test\r\n"


def seen(lab: Lab) -> int:
    return sum(len(b.seen) for b in lab.backends.values())


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(head, body) of one Content-Length or chunked response."""
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                return head, body
            body += data[:-2]
    length = 0
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


@aio
async def test_keep_alive_both_sides(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE) as lab:
        reader, writer = await asyncio.open_connection("127.0.0.1", lab.port)
        for _ in range(3):
            writer.write(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
            head, body = await read_response(reader)
            assert head.startswith(b"HTTP/1.1 200") and b'"gru1"' in body
        writer.close()
        assert lab.service.proxy.pool.connects == 1  # one pooled upstream connection served all three


@aio
async def test_pipelined_requests_answered_in_order(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE) as lab:
        reader, writer = await asyncio.open_connection("127.0.0.1", lab.port)
        writer.write(b"".join(b"GET /%d HTTP/1.1\r\n" % i + H + b"\r\n" for i in range(3)))
        for i in range(3):
            _, body = await read_response(reader)
            assert b'"target": "/%d"' % i in body
        writer.close()


@aio
async def test_chunked_request_and_streamed_response(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE) as lab:
        body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        r = parse_response(await raw(lab.port, b"POST / HTTP/1.1\r\n" + H +
                                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + body))
        assert r.status == 200 and r.json()["body_len"] == 11 and r.json()["body_head"] == "hello world"
        data = await raw(lab.port, b"GET /stream HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
        assert b"transfer-encoding: chunked" in data.lower()
        assert parse_response(data).body == b"".join(b"tick %d\n" % i for i in range(5))


@aio
async def test_http10_client(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE) as lab:
        data = await raw(lab.port, b"GET /stream HTTP/1.0\r\n" + H + b"\r\n")
        head, _, body = data.partition(b"\r\n\r\n")
        assert b"chunked" not in head.lower()  # close-delimited for HTTP/1.0 (RFC 9112 section 6.3)
        assert body == b"".join(b"tick %d\n" % i for i in range(5))
        r = parse_response(await raw(lab.port, b"GET / HTTP/1.0\r\n" + H + b"\r\n"))
        assert r.status == 200 and r.json()["machine"] == "gru1"


@aio
async def test_expect_100_continue(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE) as lab:
        reader, writer = await asyncio.open_connection("127.0.0.1", lab.port)
        writer.write(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        interim = await reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100")
        writer.write(b"body")
        head, body = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 200") and b'"body_len": 4' in body
        sent = lab.backends["gru1"].seen[0].head
        assert sent.header(b"expect") is None
        writer.close()


@aio
async def test_upgrade_tunnel(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE) as lab:
        reader, writer = await asyncio.open_connection("127.0.0.1", lab.port)
        writer.write(b"GET /ws HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nearly")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101") and b"upgrade: websocket" in head.lower()
        assert await reader.readexactly(5) == b"early"
        writer.write(b"ping-pong")
        assert await reader.readexactly(9) == b"ping-pong"
        writer.close()


@aio
async def test_head_request_keeps_connection_usable(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE) as lab:
        reader, writer = await asyncio.open_connection("127.0.0.1", lab.port)
        writer.write(b"HEAD / HTTP/1.1\r\n" + H + b"\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"content-length:" in head.lower()
        writer.write(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
        head, body = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 200") and b'"method": "GET"' in body
        writer.close()


@aio
async def test_huge_head_is_431(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE) as lab:
        data = await raw(lab.port, b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 40000 + b"\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 431") and b"fly-proxy-error: PH02" in data
        many = b"".join(b"X-%d: 1\r\n" % i for i in range(150))
        data = await raw(lab.port, b"GET / HTTP/1.1\r\n" + H + many + b"\r\n")
        assert data.startswith(b"HTTP/1.1 431")
        assert seen(lab) == 0


SMUGGLING = [
    pytest.param(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                 id="cl-and-te"),
    pytest.param(b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
                 id="te-and-cl"),
    pytest.param(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", id="two-cl"),
    pytest.param(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nContent-Length: 4\r\n\r\nabcd", id="dup-cl"),
    pytest.param(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4, 4\r\n\r\nabcd", id="cl-list"),
    pytest.param(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", id="cl-negative"),
    pytest.param(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +4\r\n\r\nabcd", id="cl-plus"),
    pytest.param(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x4\r\n\r\nabcd", id="cl-hex"),
    pytest.param(b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
                 id="bad-chunk-size"),
    pytest.param(b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
                 id="negative-chunk"),
    pytest.param(b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                 b"fffffffffffffffffff\r\nabc\r\n0\r\n\r\n", id="chunk-overflow"),
    pytest.param(b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n",
                 id="chunk-longer-than-size"),
    pytest.param(b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
                 id="te-chunked-not-last"),
    pytest.param(b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", id="te-xchunked"),
    pytest.param(b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n0\r\n\r\n", id="te-gzip"),
    pytest.param(b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", id="space-before-colon"),
    pytest.param(b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding:\tchunked\r\n Content-Length: 3\r\n\r\n0\r\n\r\n",
                 id="obs-fold"),
    pytest.param(b"POST / HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", id="te-in-http10"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a.sixpn.test\r\nHost: web.sixpn.test\r\n\r\n", id="two-hosts"),
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="no-host"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: web.sixpn.test/evil\r\n\r\n", id="bad-host"),
    pytest.param(b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", id="nul-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\n" + H + b"X A: b\r\n\r\n", id="space-in-name"),
    pytest.param(b"GET / HTTP/1.1\r\n" + H + b"NoColon\r\n\r\n", id="no-colon"),
    pytest.param(b"G(T / HTTP/1.1\r\n" + H + b"\r\n", id="bad-method"),
    pytest.param(b"GET / HTTP/1.1 extra\r\n" + H + b"\r\n", id="bad-request-line"),
    pytest.param(b"GET / HTTP/2.0\r\n" + H + b"\r\n", id="http2-line"),
    pytest.param(b"GET /\x7f HTTP/1.1\r\n" + H + b"\r\n", id="bad-target-byte"),
    pytest.param(b"GET foo HTTP/1.1\r\n" + H + b"\r\n", id="relative-target"),
    pytest.param(b"CONNECT web.sixpn.test:443 HTTP/1.1\r\n" + H + b"\r\n", id="connect"),
    pytest.param(b"GET / HTTP/1.1\r\n" + H + b"X-A: b\rX-B: c\r\n\r\n", id="bare-cr"),
]


@pytest.mark.parametrize("data", SMUGGLING)
@aio
async def test_malformed_rejected_never_forwarded(tmp_path: Path, data: bytes) -> None:
    async with edge_lab(tmp_path, ONE) as lab:
        reply = await raw(lab.port, data)
        status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0
        assert status in (400, 405, 501, 505), reply[:120]
        assert b"fly-proxy-error: PH0" in reply
        assert seen(lab) == 0


@aio
async def test_smuggled_second_request_not_forwarded(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE) as lab:
        smuggle = b"GET /admin HTTP/1.1\r\n" + H + b"\r\n"
        data = (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"0\r\n\r\n" + smuggle)
        reply = await raw(lab.port, data)
        assert reply.startswith(b"HTTP/1.1 400")
        assert all(ex.head.target != b"/admin" for b in lab.backends.values() for ex in b.seen)


@aio
async def test_header_and_idle_timeouts(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE, header_timeout=0.3, idle_timeout=0.3) as lab:
        reply = await raw(lab.port, b"GET / HTTP/1.1\r\nHost: web", timeout=5)
        assert reply.startswith(b"HTTP/1.1 408") and b"PH03" in reply
        reader, writer = await asyncio.open_connection("127.0.0.1", lab.port)
        writer.write(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
        await read_response(reader)
        # The server closes an idle keep-alive connection: read returns EOF (no timing asserted).
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


@aio
async def test_back_pressure_against_slow_client(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE) as lab:
        reader, writer = await asyncio.open_connection("127.0.0.1", lab.port)
        writer.write(b"GET /big HTTP/1.1\r\n" + H + b"\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        reader._transport.pause_reading()  # type: ignore[attr-defined]
        await asyncio.sleep(0.5)
        backend_ex = lab.backends["gru1"].seen[0]
        # The machine is held back: it has not been able to push the 64 MiB body through the edge.
        assert not backend_ex.finished
        edge_conn = next(iter(lab.service.proxy.connections))
        assert edge_conn.transport is not None and edge_conn.transport.get_write_buffer_size() < 1 << 20
        reader._transport.resume_reading()  # type: ignore[attr-defined]
        total = 0
        while total < 64 * 1024 * 1024:
            chunk = await reader.read(1 << 20)
            assert chunk
            total += len(chunk)
        assert total == 64 * 1024 * 1024
        writer.close()


@aio
async def test_upload_streams_without_buffering_everything(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE) as lab:
        size = 8 * 1024 * 1024
        reader, writer = await asyncio.open_connection("127.0.0.1", lab.port)
        writer.write(b"PUT / HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % size)
        block = b"y" * 65536
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()
        head, body = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 200") and b'"body_len": %d' % size in body
        writer.close()


@aio
async def test_graceful_drain(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE) as lab:
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", lab.port)
        idle_w.write(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
        await read_response(idle_r)
        busy_r, busy_w = await asyncio.open_connection("127.0.0.1", lab.port)
        busy_w.write(b"GET /stream HTTP/1.1\r\n" + H + b"\r\n")
        await busy_r.readuntil(b"\r\n\r\n")
        drain = asyncio.ensure_future(lab.service.drain(5.0))
        assert await asyncio.wait_for(idle_r.read(), 5) == b""  # idle connection closed
        rest = await asyncio.wait_for(busy_r.read(), 5)  # in-flight response completes, then close
        assert rest.endswith(b"0\r\n\r\n") and b"tick 4" in rest
        await drain
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", lab.port)
        idle_w.close()
        busy_w.close()


@aio
async def test_half_closed_client_still_gets_its_answer(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE) as lab:
        reader, writer = await asyncio.open_connection("127.0.0.1", lab.port)
        writer.write(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
        writer.write_eof()
        data = await asyncio.wait_for(reader.read(), 5)
        assert data.startswith(b"HTTP/1.1 200") and b'"gru1"' in data
        writer.close()


@aio
async def test_first_byte_timeout_is_504(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE, first_byte_timeout=0.3) as lab:
        data = await raw(lab.port, b"GET /slow HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n", timeout=10)
        assert data.startswith(b"HTTP/1.1 504") and b"PR05" in data


@aio
async def test_stalled_upload_is_cut_and_never_completes_upstream(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE, body_timeout=0.3) as lab:
        reader, writer = await asyncio.open_connection("127.0.0.1", lab.port)
        writer.write(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 100\r\n\r\nonly-a-little")
        assert await asyncio.wait_for(reader.read(), 10) == b""  # the edge cut the connection
        writer.close()
        for ex in lab.backends["gru1"].seen:  # the machine saw at most an aborted body
            assert ex.body.error is not None or not ex.body.done
        assert lab.service.proxy.health.healthy(lab.machines["gru1"])  # the client's fault, not the machine's


@aio
async def test_refused_upgrade_answers_then_closes(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE) as lab:
        lab.backends["gru1"].refuse_upgrade = True
        reader, writer = await asyncio.open_connection("127.0.0.1", lab.port)
        writer.write(b"GET /ws HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5)  # the whole response, then EOF
        assert data.startswith(b"HTTP/1.1 200") and b"connection: close" in data.lower()
        writer.close()


@aio
async def test_connection_limit(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE, max_connections=2) as lab:
        held = [await asyncio.open_connection("127.0.0.1", lab.port) for _ in range(2)]
        for reader, writer in held:  # connections in use: not evicted for a new one (test_security.py)
            writer.write(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        for _ in range(100):
            if len(lab.service.proxy.connections) == 2:
                break
            await asyncio.sleep(0.01)
        assert await raw(lab.port, b"GET / HTTP/1.1\r\n" + H + b"\r\n") == b""  # closed at once
        for _, writer in held:
            writer.close()
        for _ in range(100):
            if not lab.service.proxy.connections:
                break
            await asyncio.sleep(0.01)
        reply = await raw(lab.port, b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200")
