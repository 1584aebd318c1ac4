"""The edge's lane (`edge_proxy.lane`): a simple keep-alive GET/HEAD answered from the two read callbacks.

The same requests with the lane on and off reach the machine and the client alike; whatever is unusual while a
request is in flight (a response in two reads, chunked, fly-replay, a dead pooled connection, a silent machine,
a gone client, pipelined bytes, a reset mid-response) ends the way the fast path ends it; what the lane
declines is answered as before; the access log, the metrics and a drain see lane requests like any other.
`request()` sends `Connection: close`, which the lane declines: lane requests here go through `Client`."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from edge_proxy.http1.server import ServerConnection
from edge_proxy.proxy import EdgeProxy
from tests.edge_proxy.harness import Lab, Response, aio, dechunk, edge_lab, parse_response, raw, request

ONE = {"gru1": ("web", "gru")}
TWO = {"gru1": ("web", "gru"), "gig1": ("web", "gig")}
GET = b"GET / HTTP/1.1\r\nHost: web.sixpn.test\r\n\r\n"
#: What a browser sends (keep-alive, no body): the lane's common case.
BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)", "Accept": "text/html,*/*;q=0.8",
           "Accept-Language": "en-US,en;q=0.5", "Accept-Encoding": "gzip, deflate, br", "Cookie": "a=1; b=2",
           "Connection": "keep-alive", "Keep-Alive": "timeout=5"}
#: Fields whose values differ by request or by lab (ids, the listener's port) or by clock.
VOLATILE = {"fly-request-id", "date", "x-forwarded-port", "fly-forwarded-port", "content-length"}


def count_lane(proxy: EdgeProxy) -> list[bool]:
    """Record each lane decision (connections made after this call use the wrapper)."""
    taken: list[bool] = []
    original = proxy.lane.take

    def take(conn: ServerConnection, data: bytes) -> bool:
        taken.append(original(conn, data))
        return taken[-1]

    proxy.lane.take = take  # type: ignore[method-assign]
    return taken


class Client:
    """One keep-alive client connection: requests written as given, responses read by their framing."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    @staticmethod
    def head(method: str = "GET", path: str = "/", host: str = "web.sixpn.test",
             headers: dict[str, str] | None = None, version: str = "1.1") -> bytes:
        lines = [f"{method} {path} HTTP/{version}", f"Host: {host}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def response(self, method: str = "GET") -> Response:
        async with asyncio.timeout(10):
            head = await self.reader.readuntil(b"\r\n\r\n")
            r = parse_response(head)
            length = r.header("content-length")
            if method == "HEAD":
                body = b""
            elif (r.header("transfer-encoding") or "").lower() == "chunked":
                body = dechunk(await self.reader.readuntil(b"\r\n0\r\n\r\n"))
            elif length is not None:
                body = await self.reader.readexactly(int(length))
            else:
                body = await self.reader.read()
        return Response(r.status, r.headers, body)

    async def get(self, path: str = "/", method: str = "GET", host: str = "web.sixpn.test",
                  headers: dict[str, str] | None = None) -> Response:
        self.send(self.head(method, path, host, headers))
        return await self.response(method)

    async def closed(self) -> bool:
        """True when the edge closes the connection (EOF) within 2 s with no more bytes."""
        async with asyncio.timeout(2):
            return await self.reader.read() == b""

    def close(self) -> None:
        self.writer.close()


async def get(port: int, path: str = "/", method: str = "GET", host: str = "web.sixpn.test",
              headers: dict[str, str] | None = None) -> Response:
    """One keep-alive request on its own connection (the lane's kind), closed after the response."""
    client = await Client.open(port)
    try:
        return await client.get(path, method, host, headers)
    finally:
        client.close()


async def warm(lab: Lab) -> list[bool]:
    """A first request leaves a pooled connection to the machine; then count the lane's decisions."""
    assert (await request(lab.port)).status == 200
    return count_lane(lab.service.proxy)


def settled(proxy: EdgeProxy) -> bool:
    return all(v == 0 for v in proxy.load.requests.values())


def fields(r: Response) -> dict[str, str]:
    return {k.lower(): v for k, v in r.headers}


def sent(r: Response) -> list[tuple[str, str]]:
    """The request fields the machine received (its echo), names lowercased."""
    return [(k.lower(), v) for k, v in r.json()["headers"]]


# -- 1, 2: the same exchange, and many of them ----------------------------------------------------------------

@aio
async def test_lane_sends_and_answers_what_the_parser_paths_do(tmp_path: Path) -> None:
    answers: dict[bool, list[Response]] = {}
    for lane in (True, False):
        async with edge_lab(tmp_path / str(lane), ONE, lane=lane) as lab:
            taken = await warm(lab)
            answers[lane] = [await get(lab.port, "/x?y=1", headers=BROWSER) for _ in range(3)]
            answers[lane].append(await get(lab.port, "/health"))
            assert taken == ([True] * 4 if lane else [])
            for r in answers[lane][:3]:
                assert dict(sent(r))["x-forwarded-port"] == dict(sent(r))["fly-forwarded-port"] == str(lab.port)
            assert settled(lab.service.proxy)
    for on, off in zip(answers[True], answers[False], strict=True):
        assert on.status == off.status == 200
        assert [(k, v) for k, v in on.headers if k.lower() not in VOLATILE] == \
               [(k, v) for k, v in off.headers if k.lower() not in VOLATILE], (on.headers, off.headers)
        assert int(fields(on)["content-length"]) == len(on.body)
    assert answers[True][3].body == answers[False][3].body == b"ok\n"
    for on, off in zip(answers[True][:3], answers[False][:3], strict=True):
        upstream_on = [(k, v) for k, v in sent(on) if k not in VOLATILE]
        upstream_off = [(k, v) for k, v in sent(off) if k not in VOLATILE]
        assert sorted(upstream_on) == sorted(upstream_off), (upstream_on, upstream_off)
        doc_on, doc_off = on.json(), off.json()
        assert {k: v for k, v in doc_on.items() if k != "headers"} == \
               {k: v for k, v in doc_off.items() if k != "headers"}
    for r in answers[True][:3]:
        upstream = dict(sent(r))
        names = [k for k, _ in sent(r)]
        assert "connection" not in names and "keep-alive" not in names  # hop-by-hop, not forwarded
        assert upstream["via"] == "1.1 sixpn-edge" and upstream["x-forwarded-for"] == "127.0.0.1"
        assert upstream["cookie"] == "a=1; b=2" and upstream["fly-client-ip"] == "127.0.0.1"
        assert upstream["fly-region"] == "gru" and upstream["x-forwarded-proto"] == "http"
        assert upstream["fly-request-id"] == r.header("fly-request-id")
        # The edge's Server replaces the machine's; one of each edge field.
        assert [k for k, _ in r.headers].count("server") == 1 and r.header("server") == "sixpn-edge"
        assert r.header("via") == "1.1 sixpn-edge" and r.header("connection") is None
    ids = {r.header("fly-request-id") for r in answers[True]}
    assert len(ids) == 4 and None not in ids


@aio
async def test_lane_keep_alive(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE) as lab:
        taken = await warm(lab)
        proxy = lab.service.proxy
        client = await Client.open(lab.port)
        try:
            for i in range(50):
                r = await client.get(f"/k{i}")
                assert r.status == 200 and r.json()["target"] == f"/k{i}"
        finally:
            client.close()
        assert taken == [True] * 50
        assert proxy.load.requests == {} and proxy.pool.connects == 1


# -- 3: what turns a lane request into a fast-path exchange -----------------------------------------------------

@aio
async def test_response_in_two_reads(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE) as lab:
        taken = await warm(lab)
        client = await Client.open(lab.port)
        try:
            r = await client.get("/split")
            assert r.status == 200 and r.body == b"split body\n" and r.header("server") == "sixpn-edge"
            assert r.header("fly-request-id") and r.header("content-length") == "11"
            r = await client.get("/after")  # the materialized exchange left the connections reusable
            assert r.status == 200 and r.json()["target"] == "/after"
        finally:
            client.close()
        assert taken == [True, True]
        assert settled(lab.service.proxy) and lab.service.proxy.pool.connects == 1


@aio
async def test_chunked_and_head(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE) as lab:
        taken = await warm(lab)
        r = await get(lab.port, "/stream")
        assert r.status == 200 and r.header("transfer-encoding") == "chunked"
        assert r.body == b"".join(b"tick %d\n" % i for i in range(5))
        size = len((await get(lab.port)).body)
        r = await get(lab.port, method="HEAD")
        assert r.status == 200 and r.header("content-length") == str(size + 1)  # "HEAD" echoed: one byte more
        assert taken == [True, True, True]
        r = await get(lab.port, "/tail")
        assert r.status == 200 and r.json()["target"] == "/tail"
        await asyncio.sleep(0.05)
        assert settled(lab.service.proxy)


@aio
async def test_fly_replay(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, {"gru1": ("web", "gru"), "sjc1": ("web", "sjc")}) as lab:
        taken = await warm(lab)
        lab.backends["gru1"].replay = "region=sjc;state=s1"
        r = await get(lab.port)
        assert taken == [True] and r.status == 200 and r.json()["machine"] == "sjc1"
        assert dict(sent(r))["fly-replay-src"].endswith(";state=s1")
        assert r.body != b"replaying" and lab.service.proxy.metrics.counters["sixpn_edge_replays_total"]
        assert settled(lab.service.proxy)


@aio
async def test_response_via_is_merged(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE) as lab:
        taken = await warm(lab)
        client = await Client.open(lab.port)
        try:
            r = await client.get("/via")  # the lane declines the response (a Via): the Relay merges it
            assert r.status == 200 and r.body == b"via\n" and r.header("via") == "1.1 app-cache, 1.1 sixpn-edge"
            assert r.header("server") == "sixpn-edge" and [k for k, _ in r.headers].count("server") == 1
            r = await client.get("/")
            assert r.status == 200 and r.header("via") == "1.1 sixpn-edge"
        finally:
            client.close()
        assert taken == [True, True] and settled(lab.service.proxy)


@aio
async def test_dead_pooled_connection_is_retried(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE) as lab:
        taken = await warm(lab)
        lab.backends["gru1"].fail_next = 1
        r = await get(lab.port)
        proxy = lab.service.proxy
        assert r.status == 200 and r.json()["machine"] == "gru1" and taken == [True]
        assert proxy.pool.connects == 2 and proxy.health.healthy(lab.machines["gru1"])
        assert len(lab.backends["gru1"].seen) == 3  # warm-up, dropped, retried
        assert settled(proxy)


@aio
async def test_first_byte_timeout(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE, first_byte_timeout=0.5) as lab:
        taken = await warm(lab)
        r = await get(lab.port, "/slow")
        assert r.status == 504 and r.header("fly-proxy-error") == "PR05" and taken == [True]
        assert r.header("fly-request-id")
        assert settled(lab.service.proxy)
        assert (await get(lab.port)).status == 200


@aio
async def test_client_gone_while_machine_silent(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE, first_byte_timeout=0.4) as lab:
        taken = await warm(lab)
        # The client leaves after 0.1 s; the machine would answer after 3 s: the first-byte clock still runs.
        await raw(lab.port, b"GET /slow HTTP/1.1\r\nHost: web.sixpn.test\r\n\r\n", timeout=0.1)
        assert taken == [True]
        await asyncio.sleep(0.8)
        proxy = lab.service.proxy
        assert proxy.load.requests == {}
        assert 'status="504"' in proxy.metrics.render()


@aio
@pytest.mark.parametrize("lane", [True, False])
async def test_client_reset_while_machine_silent(tmp_path: Path, lane: bool) -> None:
    async with edge_lab(tmp_path, ONE, first_byte_timeout=0.4, lane=lane) as lab:
        taken = await warm(lab)
        client = await Client.open(lab.port)
        client.send(Client.head(path="/slow"))
        await client.writer.drain()
        await asyncio.sleep(0.1)
        sock = client.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.writer.transport.abort()  # an RST, no FIN: connection_lost at once, not eof_received
        assert taken == ([True] if lane else [])
        await asyncio.sleep(0.8)
        proxy = lab.service.proxy
        assert proxy.load.requests == {}
        assert 'status="504"' in proxy.metrics.render()


@aio
async def test_pipelined_in_one_write(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE) as lab:
        taken = await warm(lab)
        client = await Client.open(lab.port)
        try:
            client.send(Client.head(path="/p0") + Client.head(path="/p1"))
            for i in range(2):
                r = await client.response()
                assert r.status == 200 and r.json()["target"] == f"/p{i}"
        finally:
            client.close()
        assert taken == [False]  # two heads in one read: the scan declines
        assert settled(lab.service.proxy)


@aio
async def test_pipelined_while_in_flight(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE) as lab:
        taken = await warm(lab)
        client = await Client.open(lab.port)
        try:
            client.send(Client.head(path="/delay"))
            await asyncio.sleep(0.1)  # in flight on the lane
            client.send(Client.head(path="/second"))
            first = await client.response()
            second = await client.response()
            assert first.status == 200 and first.body == b"delayed\n"
            assert second.status == 200 and second.json()["target"] == "/second"
            third = await client.get("/third")  # and the connection goes on
            assert third.status == 200 and third.json()["target"] == "/third"
        finally:
            client.close()
        assert taken[0] and len(taken) == 2  # the second head came behind a flight: not offered to the lane
        assert settled(lab.service.proxy)


@aio
async def test_reset_after_head_is_retried_elsewhere(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, TWO) as lab:
        assert (await request(lab.port)).json()["machine"] == "gru1"  # leaves a pooled connection
        taken = count_lane(lab.service.proxy)
        lab.backends["gru1"].reset_after_head = 1
        r = await get(lab.port)
        assert taken == [True]
        assert r.status == 200 and r.json()["machine"] == "gig1", r  # as test_hold: held back whole, retried
        assert not lab.service.proxy.health.healthy(lab.machines["gru1"])
        assert settled(lab.service.proxy)


@aio
@pytest.mark.parametrize("lane", [True, False])
async def test_response_with_trailing_garbage(tmp_path: Path, lane: bool) -> None:
    async with edge_lab(tmp_path, ONE, lane=lane) as lab:
        taken = await warm(lab)
        r = await get(lab.port, "/garbage")
        assert r.status == 200 and r.body == b"ok\n" and taken == ([True] if lane else [])
        await asyncio.sleep(0.1)
        proxy = lab.service.proxy
        assert proxy.health.healthy(lab.machines["gru1"]) and settled(proxy)
        # Connection: close: the fast path's. With the bug the machine's response is the body of a close-delimited
        # one that never ends: a short timeout.
        r = parse_response(await raw(lab.port, Client.head(path="/health", headers={"Connection": "close"}), 0.5))
        assert r.status == 200 and r.body == b"ok\n" and r.header("server") == "sixpn-edge", r
        assert r.header("fly-request-id")
        assert proxy.pool.connects == 2  # the connection with bytes after the response was not reused


# -- the lane's route cache follows the catalog, health and limits ---------------------------------------------

@aio
async def test_route_follows_catalog_changes(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, TWO) as lab:
        taken = await warm(lab)
        assert (await get(lab.port)).json()["machine"] == "gru1" and taken == [True]  # cached: gru1 for this Host
        lab.catalog.set_machine_state(lab.machines["gru1"], "stopped")
        lab.sync()
        for _ in range(3):
            assert (await get(lab.port)).json()["machine"] == "gig1"
        assert lab.backends["gru1"].seen[-1].head.target == b"/" and len(lab.backends["gru1"].seen) == 2
        lab.catalog.set_machine_state(lab.machines["gru1"], "started")
        lab.sync()
        machines = [(await get(lab.port)).json()["machine"] for _ in range(3)]
        assert machines == ["gru1"] * 3 and taken[-1]
        assert settled(lab.service.proxy)


@aio
async def test_route_follows_app_config_changes(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE) as lab:
        taken = await warm(lab)
        proxy = lab.service.proxy
        # Two in flight at once: two pooled connections, both on the lane's cached route (no hard limit).
        both = await asyncio.gather(get(lab.port, "/delay"), get(lab.port, "/delay"))
        assert [r.status for r in both] == [200, 200] and proxy.pool.connects == 2
        lab.catalog.set_app_config("web", {"app": "web", "http_service": {"internal_port": 8080, "concurrency": {
            "type": "requests", "soft_limit": 1, "hard_limit": 1}}})
        lab.sync()  # the machine stays: its idle connections stay pooled
        del taken[:]
        first = asyncio.ensure_future(get(lab.port, "/delay"))
        await asyncio.sleep(0.1)
        second = await get(lab.port, "/after")  # an idle pooled connection is there, the new hard limit is not
        assert (await first).status == 200 and second.status == 200
        assert taken == [True, False] and proxy.pool.connects == 2
        assert settled(proxy)


@aio
async def test_machine_marked_down_is_not_used(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, TWO) as lab:
        taken = await warm(lab)
        assert (await get(lab.port)).json()["machine"] == "gru1"
        proxy = lab.service.proxy
        proxy.health.down_until[lab.machines["gru1"]] = 1e18
        for _ in range(3):
            assert (await get(lab.port)).json()["machine"] == "gig1"
        del proxy.health.down_until[lab.machines["gru1"]]
        assert (await get(lab.port)).json()["machine"] == "gru1"
        assert taken[0] and taken[-1] and settled(proxy)


@aio
async def test_hard_limit_queues_instead_of_the_lane(tmp_path: Path) -> None:
    config = {"app": "web", "http_service": {"internal_port": 8080, "concurrency": {
        "type": "requests", "soft_limit": 1, "hard_limit": 1}}}
    async with edge_lab(tmp_path, ONE, app_config=config) as lab:
        taken = await warm(lab)
        first = await Client.open(lab.port)
        try:
            first.send(Client.head(path="/delay"))
            await asyncio.sleep(0.1)  # on the lane: the machine is at its hard limit
            second = asyncio.ensure_future(get(lab.port, "/queued"))
            r = await first.response()
            assert r.status == 200 and r.body == b"delayed\n"
            r = await second
            assert r.status == 200 and r.json()["target"] == "/queued"
        finally:
            first.close()
        assert taken == [True, False]  # the second waited for capacity on the general path
        assert settled(lab.service.proxy)


@aio
async def test_connections_mode_keep_alive_on_the_lane(tmp_path: Path) -> None:
    config = {"app": "web", "http_service": {"internal_port": 8080, "concurrency": {
        "type": "connections", "soft_limit": 1, "hard_limit": 1}}}
    async with edge_lab(tmp_path, ONE, app_config=config, queue_timeout=0.3) as lab:
        taken = await warm(lab)
        proxy = lab.service.proxy
        client = await Client.open(lab.port)
        try:
            for i in range(3):  # its own connection's count does not block it
                r = await client.get(f"/c{i}")
                assert r.status == 200 and r.json()["target"] == f"/c{i}"
            assert proxy.load.connections == {lab.machines["gru1"]: 1}
        finally:
            client.close()
        assert taken == [True] * 3
        for _ in range(20):
            if not proxy.load.connections:
                break
            await asyncio.sleep(0.02)
        assert proxy.load.connections == {} and settled(proxy)


@aio
async def test_idle_timeout_after_but_not_during_a_flight(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE, idle_timeout=0.2) as lab:
        taken = await warm(lab)
        client = await Client.open(lab.port)
        try:
            r = await client.get("/delay")  # 0.3 s in flight: longer than the idle timeout
            assert r.status == 200 and r.body == b"delayed\n"
            r = await client.get("/again")  # the keep-alive connection is still usable right after
            assert r.status == 200
            started = asyncio.get_running_loop().time()
            assert await client.closed()  # then idle: closed by the edge
            assert asyncio.get_running_loop().time() - started < 1.0
        finally:
            client.close()
        assert taken == [True, True]


# -- 4: what the lane declines -----------------------------------------------------------------------------------

@aio
async def test_declined_requests_are_answered(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE) as lab:
        taken = await warm(lab)
        port = lab.port
        client = await Client.open(port)
        try:
            client.send(Client.head("POST", "/p", headers={"Content-Length": "4"}) + b"body")
            r = await client.response()
        finally:
            client.close()
        assert r.status == 200 and r.json()["method"] == "POST" and r.json()["body_len"] == 4
        out = await raw(port, b"GET /old HTTP/1.0\r\nHost: web.sixpn.test\r\n\r\n")
        r = parse_response(out)
        assert r.status == 200 and r.json()["target"] == "/old"
        r = await get(port, headers={"Fly-Prefer-Region": "gru"})
        assert r.status == 200 and dict(sent(r))["fly-prefer-region"] == "gru"
        r = await get(port, headers={"X-Forwarded-For": "10.1.1.1"})
        assert r.status == 200 and dict(sent(r))["x-forwarded-for"] == "10.1.1.1, 127.0.0.1"
        r = await get(port, headers={"Via": "1.1 cdn"})
        assert r.status == 200 and dict(sent(r))["via"] == "1.1 cdn, 1.1 sixpn-edge"
        r = await get(port, host="nope.sixpn.test")
        assert r.status == 404 and r.header("fly-proxy-error") == "PR02"
        assert taken == [False] * 6
        assert settled(lab.service.proxy)


@aio
async def test_head_split_over_two_reads(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE) as lab:
        taken = await warm(lab)
        client = await Client.open(lab.port)
        try:
            client.send(b"GET /split-head HTTP/1.1\r\nHost: web.sixpn.test\r\n")
            await client.writer.drain()
            await asyncio.sleep(0.05)
            client.send(b"X-Late: 1\r\n\r\n")
            r = await client.response()
            assert r.status == 200 and r.json()["target"] == "/split-head" and dict(sent(r))["x-late"] == "1"
            r = await client.get("/whole")  # the next whole head is the lane's again
            assert r.status == 200 and r.json()["target"] == "/whole"
        finally:
            client.close()
        assert taken == [False, True]
        assert settled(lab.service.proxy)


# -- 5, 6, 7: access log, metrics, drain ---------------------------------------------------------------------

@aio
async def test_access_log(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    async with edge_lab(tmp_path, ONE) as lab:
        taken = await warm(lab)
        proxy = lab.service.proxy
        proxy.access_log = log.open("a", buffering=1)
        try:
            r = await get(lab.port, "/logged?q=1")
        finally:
            proxy.access_log.close()
            proxy.access_log = None
        assert taken == [True] and r.status == 200
        lines = log.read_text().splitlines()
        assert len(lines) == 1
        record: dict[str, Any] = json.loads(lines[0])
        assert record["method"] == "GET" and record["host"] == "web.sixpn.test" and record["path"] == "/logged?q=1"
        assert record["status"] == 200 and record["app"] == "web" and record["machine"] == lab.machines["gru1"]
        assert record["bytes"] > 0 and record["id"] == r.header("fly-request-id")
        assert record["error"] == "" and record["client"] == "127.0.0.1"


@aio
async def test_metrics_count_lane_requests(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE) as lab:
        taken = await warm(lab)
        for _ in range(3):
            assert (await get(lab.port)).status == 200
        assert taken == [True] * 3
        text = lab.service.proxy.metrics.render()
        assert 'sixpn_edge_requests_total{app="web",region="gru",status="200"} 4' in text  # warm-up + 3


@aio
async def test_drain_lets_a_lane_request_finish(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, ONE) as lab:
        taken = await warm(lab)
        client = await Client.open(lab.port)
        try:
            client.send(Client.head(path="/delay"))
            await asyncio.sleep(0.1)
            drain = asyncio.ensure_future(lab.service.drain(5.0))
            r = await client.response()
            assert r.status == 200 and r.body == b"delayed\n"
            assert await client.closed()
            await drain
        finally:
            client.close()
        assert taken == [True]


@aio
@pytest.mark.parametrize("lane", [True, False])
async def test_drain_response_says_connection_close(tmp_path: Path, lane: bool) -> None:
    async with edge_lab(tmp_path, ONE, lane=lane) as lab:
        await warm(lab)
        client = await Client.open(lab.port)
        try:
            client.send(Client.head(path="/delay"))
            await asyncio.sleep(0.1)
            drain = asyncio.ensure_future(lab.service.drain(5.0))
            r = await client.response()
            assert r.status == 200 and r.header("connection") == "close"  # RFC 9112 §9.6: closing after it
            await drain
        finally:
            client.close()


@aio
@pytest.mark.parametrize("lane", [True, False])
async def test_half_closed_client_still_gets_its_answer(tmp_path: Path, lane: bool) -> None:
    async with edge_lab(tmp_path, ONE, lane=lane) as lab:
        taken = await warm(lab)
        client = await Client.open(lab.port)
        try:
            client.send(Client.head(path="/delay"))
            await client.writer.drain()
            await asyncio.sleep(0.05)  # on the lane before the FIN arrives
            client.writer.write_eof()
            async with asyncio.timeout(5):
                data = await client.reader.read()
            assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\ndelayed\n"), data
        finally:
            client.close()
        assert taken == ([True] if lane else [])
        await asyncio.sleep(0.05)
        assert settled(lab.service.proxy)
