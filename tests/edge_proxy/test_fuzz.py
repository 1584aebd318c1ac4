"""Mutation fuzzing of request heads and bodies against the edge over loopback: whatever arrives, the edge
answers with a well-formed response (or closes), never with an internal error, and keeps serving."""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path

import pytest

from tests.edge_proxy.harness import aio, edge_lab, raw

SEEDS = [
    b"GET / HTTP/1.1\r\nHost: web.sixpn.test\r\nAccept: */*\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: web.sixpn.test\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: web.sixpn.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: web.sixpn.test\r\nConnection: keep-alive\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: web.sixpn.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
]
TOKENS = [b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b"\x00", b"\x7f", b"\xff", b"chunked", b"Content-Length: 3\r\n",
          b"Transfer-Encoding: chunked\r\n", b"Host: x\r\n", b"0\r\n\r\n", b"ffffffffffffffff", b"-1", b",", b";"]


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        pos = rng.randrange(len(out) + 1)
        if op == 0 and out:  # flip a byte
            out[min(pos, len(out) - 1)] = rng.randrange(256)
        elif op == 1:  # insert a token
            out[pos:pos] = rng.choice(TOKENS)
        elif op == 2 and out:  # delete a run
            del out[pos:pos + rng.randint(1, 8)]
        elif op == 3:  # duplicate a line
            lines = bytes(out).split(b"\r\n")
            i = rng.randrange(len(lines))
            lines.insert(i, lines[i])
            out = bytearray(b"\r\n".join(lines))
        else:  # change case
            out[pos:pos + 6] = bytes(out[pos:pos + 6]).swapcase()
    return bytes(out)


@aio
async def test_mutated_requests_never_break_the_edge(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(6)
    caplog.set_level(logging.ERROR)
    async with edge_lab(tmp_path, {"gru1": ("web", "gru")}, header_timeout=0.5) as lab:
        cases = [mutate(rng, rng.choice(SEEDS)) for _ in range(250)]
        replies: list[bytes] = []
        for i in range(0, len(cases), 50):  # 50 connections at a time; keep-alive ones end at the timeout
            replies += await asyncio.gather(*(raw(lab.port, data, timeout=0.7) for data in cases[i:i + 50]))
        for data, reply in zip(cases, replies, strict=True):
            if reply:
                assert reply.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), (data, reply[:80])
                status = int(reply[9:12])
                assert status < 500 or status in (501, 502, 503, 505), (data, reply[:200])
                if status >= 400 and status != 404:
                    assert b"fly-proxy-error: P" in reply or b"fly-proxy-error" not in reply
        reader, writer = await asyncio.open_connection("127.0.0.1", lab.port)
        writer.write(SEEDS[0])
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        writer.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
