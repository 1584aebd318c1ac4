"""A machine that dies after the edge read its response head but before the body: a small response to a
retriable request is held back whole, so the request is retried elsewhere (spec rule 5); anything else is not."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.edge_proxy.harness import aio, edge_lab, raw, request

MACHINES = {"gru1": ("web", "gru"), "gig1": ("web", "gig")}


@aio
async def test_get_reset_after_head_is_retried_general_path(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, MACHINES) as lab:
        lab.backends["gru1"].reset_after_head = 1  # first request: a new connection, the general path
        r = await request(lab.port)
        assert r.status == 200 and r.json()["machine"] == "gig1", r
        assert not lab.service.proxy.health.healthy(lab.machines["gru1"])  # passive health
        assert len(lab.backends["gru1"].seen) == 1


@aio
async def test_get_reset_after_head_is_retried_fast_path(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, MACHINES) as lab:
        assert (await request(lab.port)).json()["machine"] == "gru1"  # leaves a pooled connection
        lab.backends["gru1"].reset_after_head = 1
        # keep-alive, pooled upstream, no body: the fast path takes it
        data = await raw(lab.port, b"GET / HTTP/1.1\r\nHost: web.sixpn.test\r\n\r\n"
                                   b"GET /health HTTP/1.1\r\nHost: web.sixpn.test\r\nConnection: close\r\n\r\n")
        first, _, rest = data.partition(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 200 "), data
        assert b'"machine": "gig1"' in rest and rest.count(b"HTTP/1.1 200 ") == 1, data  # both answered, in order
        assert not lab.service.proxy.health.healthy(lab.machines["gru1"])


@aio
async def test_post_reset_after_head_is_not_retried(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, MACHINES) as lab:
        lab.backends["gru1"].reset_after_head = 1
        data = await raw(lab.port, b"POST / HTTP/1.1\r\nHost: web.sixpn.test\r\nContent-Length: 4\r\n\r\nbody")
        # Not idempotent: streamed as it came, then cut (the client sees a short body, never a 200 from gig1)
        assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\npartial"), data
        assert lab.backends["gig1"].seen == []


@aio
async def test_large_or_streamed_responses_are_not_held(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, MACHINES) as lab:
        reader, writer = await asyncio.open_connection("127.0.0.1", lab.port)
        try:
            for path in (b"/stream", b"/big"):  # chunked past nothing yet / 64 MiB Content-Length
                writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: web.sixpn.test\r\n\r\n")
                async with asyncio.timeout(5):
                    head = await reader.readuntil(b"\r\n\r\n")
                    assert head.startswith(b"HTTP/1.1 200 "), head
                    if path == b"/stream":  # the head and first tick arrive before the body ends (5 x 20 ms)
                        first = await reader.readuntil(b"\r\n")
                        assert first == b"7\r\n", first
                        assert (await reader.readuntil(b"\r\n0\r\n\r\n")).count(b"tick") == 5
                    else:
                        await reader.readexactly(64 * 1024 * 1024)
        finally:
            writer.close()
