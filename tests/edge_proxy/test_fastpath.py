"""The callback-driven fast path (`edge_proxy.fastpath`) against the general path: same bytes upstream, same
answers, and the first attempt's failures (dead pooled connection, timeout, fly-replay) carried on correctly.
The lane (tests in test_lane.py) is off here: it would answer most of these requests before the fast path."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from edge_proxy import fastpath
from edge_proxy.http1.server import Exchange
from edge_proxy.proxy import EdgeProxy
from tests.edge_proxy.harness import aio, edge_lab, raw, request


def count_fast(proxy: EdgeProxy) -> list[bool]:
    """Record each fast-path decision (connections made after this call use the wrapper)."""
    taken: list[bool] = []
    original = proxy.fast

    def fast(ex: Exchange) -> bool:
        taken.append(original(ex))
        return taken[-1]

    proxy.fast = fast  # type: ignore[method-assign]
    return taken


@aio
async def test_fast_path_sends_what_the_general_path_sends(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, {"gru1": ("web", "gru")}, lane=False) as lab:
        taken = count_fast(lab.service.proxy)
        headers = {"X-Forwarded-For": "10.1.1.1", "Via": "1.1 cdn", "X-Custom": "a", "X-Gone": "b",
                   "Fly-Client-IP": "6.6.6.6", "Fly-Request-Id": "forged", "Keep-Alive": "timeout=5"}
        first = await request(lab.port, path="/x?y=1", headers={**headers, "Connection": "close, X-Gone"})
        second = await request(lab.port, path="/x?y=1", headers={**headers, "Connection": "close, X-Gone"})
        assert taken == [False, True]  # the first had no pooled connection yet
        sent = [b.json()["headers"] for b in (first, second)]
        for doc in sent:
            names = [k for k, _ in doc]
            assert "x-gone" not in names and "keep-alive" not in names and "connection" not in names
            fields = dict(doc)
            assert fields["x-forwarded-for"] == "10.1.1.1, 127.0.0.1" and fields["via"] == "1.1 cdn, 1.1 sixpn-edge"
        strip = [[[k, v] for k, v in doc if k != "fly-request-id"] for doc in sent]
        assert strip[0] == strip[1]
        for r in (first, second):
            assert r.status == 200 and r.header("server") == "sixpn-edge" and r.header("connection") == "close"
            assert r.header("fly-request-id") == dict(r.json()["headers"])["fly-request-id"]
        assert first.header("fly-request-id") != second.header("fly-request-id")
        # The relay writes the response head itself: the same fields, in the same order.
        answered = [[(k, v) for k, v in r.headers if k.lower() != "fly-request-id"] for r in (first, second)]
        assert answered[0] == answered[1]


@aio
async def test_fast_path_keep_alive_and_pipelining(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, {"gru1": ("web", "gru")}, lane=False) as lab:
        assert (await request(lab.port)).status == 200  # warm the pool
        taken = count_fast(lab.service.proxy)
        reader, writer = await asyncio.open_connection("127.0.0.1", lab.port)
        writer.write(b"".join(b"GET /p%d HTTP/1.1\r\nHost: web.sixpn.test\r\n\r\n" % i for i in range(3)))
        for i in range(3):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            assert b'"target": "/p%d"' % i in await reader.readexactly(length)
        writer.close()
        # The second request starts while the first's upstream read is still being parsed: that connection is not
        # handed out before the read ends (bytes after a response must never pass for the next request's), so
        # it goes the general path on another connection; the third finds a pooled one again.
        assert taken == [True, False, True]
        assert lab.service.proxy.load.requests == {}  # every in-flight count given back


@aio
async def test_fast_path_dead_pooled_connection_and_timeout(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, {"gru1": ("web", "gru")}, first_byte_timeout=0.5, lane=False) as lab:
        assert (await request(lab.port)).status == 200
        taken = count_fast(lab.service.proxy)
        lab.backends["gru1"].fail_next = 1
        r = await request(lab.port)
        assert r.status == 200 and taken == [True] and lab.service.proxy.pool.connects == 2
        assert lab.service.proxy.health.healthy(lab.machines["gru1"])
        r = await request(lab.port, path="/slow")
        assert r.status == 504 and r.header("fly-proxy-error") == "PR05" and taken[-1]
        assert r.header("fly-request-id")


@aio
async def test_fast_path_replay(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, {"gru1": ("web", "gru"), "sjc1": ("web", "sjc")}, lane=False) as lab:
        assert (await request(lab.port)).status == 200
        taken = count_fast(lab.service.proxy)
        lab.backends["gru1"].replay = "region=sjc;state=s1"
        r = await request(lab.port)
        assert taken == [True] and r.status == 200 and r.json()["machine"] == "sjc1"
        assert dict(r.json()["headers"])["fly-replay-src"].endswith(";state=s1")
        assert lab.service.proxy.metrics.counters["sixpn_edge_replays_total"]


@aio
async def test_local_tier_shortcut_agrees_with_the_chooser(tmp_path: Path) -> None:
    config = {"app": "web", "http_service": {"internal_port": 8080, "concurrency": {
        "type": "connections", "soft_limit": 3, "hard_limit": 5}}}
    machines = {"gru1": ("web", "gru"), "gru2": ("web", "gru"), "gru3": ("web", "gru"), "gig1": ("web", "gig")}
    async with edge_lab(tmp_path, machines, app_config=config, lane=False) as lab:
        proxy = lab.service.proxy
        app = proxy.table.apps["web"]
        ids = list(lab.machines.values())
        rng = random.Random(7)
        agreed = 0
        for _ in range(500):
            proxy.load.connections = {m: rng.randint(0, 6) for m in ids if rng.random() < 0.8}
            proxy.health.down_until = {m: 1e18 for m in ids if rng.random() < 0.2}
            own = rng.choice([None, *ids])
            proxy.chooser.rng.seed(1)
            quick = fastpath.local_free(proxy, proxy.table.local_plan(app, "gru"), own)
            proxy.chooser.rng.seed(1)
            decision = proxy.chooser.choose(proxy.candidates(app, own))
            if quick is not None:
                agreed += 1
                assert decision.outcome == "ok" and decision.machine is not None
                assert decision.machine.id == quick.id
        assert agreed > 100


@aio
async def test_fast_path_client_gone_while_upstream_silent(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, {"gru1": ("web", "gru")}, first_byte_timeout=0.4, lane=False) as lab:
        assert (await request(lab.port)).status == 200
        taken = count_fast(lab.service.proxy)
        # The client leaves after 0.1 s; the machine would answer after 3 s: the first-byte clock still runs.
        await raw(lab.port, b"GET /slow HTTP/1.1\r\nHost: web.sixpn.test\r\n\r\n", timeout=0.1)
        assert taken == [True]
        await asyncio.sleep(0.8)
        proxy = lab.service.proxy
        assert proxy.load.requests == {}
        assert 'status="504"' in proxy.metrics.render()


@aio
async def test_fast_path_head_http10_and_chunked(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, {"gru1": ("web", "gru")}, lane=False) as lab:
        assert (await request(lab.port)).status == 200
        taken = count_fast(lab.service.proxy)
        size = len((await request(lab.port)).body)
        r = await request(lab.port, method="HEAD")  # the echoed method is one byte longer than GET
        assert r.status == 200 and r.body == b"" and r.header("content-length") == str(size + 1)
        assert (await request(lab.port)).status == 200  # the HEAD's upstream connection was not reused
        out = await raw(lab.port, b"GET / HTTP/1.0\r\nHost: web.sixpn.test\r\n\r\n")
        head, _, body = out.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"connection: close" in head.lower()
        assert b"transfer-encoding" not in head.lower() and b'"machine": "gru1"' in body
        r = await request(lab.port, path="/stream")
        assert r.status == 200 and r.header("transfer-encoding") == "chunked"
        assert r.body == b"".join(b"tick %d\n" % i for i in range(5))
        assert taken == [True, True, False, True, True]  # after the HEAD: a new upstream connection
        assert lab.service.proxy.load.requests == {}


@aio
async def test_request_then_garbage_in_one_read_never_marks_the_machine_down(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, {"gru1": ("web", "gru")}, lane=False) as lab:
        assert (await request(lab.port)).status == 200
        taken = count_fast(lab.service.proxy)
        out = await raw(lab.port, b"GET / HTTP/1.1\r\nHost: web.sixpn.test\r\n\r\n\x01garbage\r\n\r\n", timeout=1.0)
        assert taken == [True]  # already on its way upstream when the garbage was parsed
        assert b"400" in out.split(b"\r\n", 1)[0]
        await asyncio.sleep(0.2)
        proxy = lab.service.proxy
        assert proxy.health.healthy(lab.machines["gru1"]) and proxy.load.requests == {}
        assert (await request(lab.port)).status == 200
        # The orphaned response was read to its end: its upstream connection went back to the pool.
        assert taken == [True, True] and proxy.pool.connects == 1
