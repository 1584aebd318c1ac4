"""Cross-tenant attacks on the edge over loopback (issue 15): each test tries the attack, on every request path
(the lane, the fast path, the general path)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_proxy.proxy import EdgeProxy
from tests.edge_proxy.harness import Lab, aio, edge_lab, parse_response, raw, request
from tests.edge_proxy.test_fastpath import count_fast
from tests.edge_proxy.test_lane import Client, count_lane

#: acme's web and a machine of org `other` (the attacker's, app `elsewhere`), both in the edge's region.
TENANTS = {"acme": ("web", "gru"), "evil": ("elsewhere", "gru")}


def takeover(lab: Lab) -> None:
    """The attacker lists acme's `<app>.<domain>` among its hostnames (no other app claims that exact name, so
    the catalog, which does not know the edge's domain, accepts it)."""
    lab.catalog.set_app_config("elsewhere", {"app": "elsewhere", "hostnames": ["web.sixpn.test", "evil.test"],
                                             "http_service": {"internal_port": 8080}})
    lab.sync()


async def served_by(client: Client, **kwargs: object) -> str:
    r = await client.get(**kwargs)  # type: ignore[arg-type]
    assert r.status == 200, r
    return str(r.json()["machine"])


@aio
async def test_another_orgs_app_cannot_take_app_dot_domain(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, TENANTS) as lab:
        takeover(lab)
        proxy = lab.service.proxy
        assert (await request(lab.port)).json()["machine"] == "acme"  # general path (Connection: close)
        lane, fast = count_lane(proxy), count_fast(proxy)
        client = await Client.open(lab.port)
        try:
            assert await served_by(client) == "acme"  # the lane
            assert await served_by(client, headers={"X-Forwarded-For": "10.0.0.1"}) == "acme"  # the fast path
            assert await served_by(client, headers={"Fly-Prefer-Region": "gru"}) == "acme"  # general: steering
            assert await served_by(client, method="OPTIONS") == "acme"
            client.send(b"POST / HTTP/1.1\r\nHost: web.sixpn.test\r\nContent-Length: 2\r\n\r\nhi")  # general: body
            r = await client.response()
            assert r.status == 200 and r.json()["machine"] == "acme" and r.json()["body_len"] == 2
            assert await served_by(client, host="evil.test") == "evil"  # its own hostname still works
        finally:
            client.close()
        assert lane[0] is True and True in fast and False in fast
        # acme scaled to 0: acme's name answers "no machine", it does not fall to the attacker.
        lab.catalog.set_machine_state(lab.machines["acme"], "stopped")
        lab.sync()
        for headers in ({}, {"X-Forwarded-For": "10.0.0.1"}, {"Fly-Prefer-Region": "gru"}):
            client = await Client.open(lab.port)
            try:
                r = await client.get(headers=headers)
                assert r.status == 503 and b"evil" not in r.body and b"elsewhere" not in r.body, r
            finally:
                client.close()
        assert lab.backends["evil"].seen and all(ex.head.host == b"evil.test" for ex in lab.backends["evil"].seen)


#: Underscore spellings of fields the edge owns or appends to: CGI/WSGI/Rack read each as the real one.
SPOOFED = {"Fly_Client_IP": "6.6.6.6", "X_Forwarded_For": "6.6.6.6", "x_forwarded-proto": "https",
           "Fly_Region": "evil", "FLY_REQUEST_ID": "forged", "X-Forwarded_Ssl": "on", "Fly_Replay_Src": "x",
           "Transfer_Encoding": "chunked", "Proxy_Authorization": "Basic eA==", "X_Custom": "kept"}


def check_unspoofed(received: list[list[str]]) -> None:
    """What the machine saw: no `_` spelling of an edge field, the edge's own values, other fields intact."""
    names = {k.lower(): v for k, v in received}
    assert not [k for k in names if "_" in k and k != "x_custom"], received
    assert names["fly-client-ip"] == "127.0.0.1" and names["x-forwarded-for"] == "127.0.0.1"
    assert names["x-forwarded-proto"] in ("http", "https") and names["fly-region"] == "gru"
    assert names["x_custom"] == "kept"  # an underscore field the edge does not own goes through


@aio
async def test_underscore_spellings_of_edge_fields_never_reach_the_app(tmp_path: Path) -> None:
    from edge_proxy.tls import make_self_signed
    from tests.edge_proxy.test_h2 import Client as H2Client

    certs = tmp_path / "certs"
    make_self_signed("web.sixpn.test", certs)
    async with edge_lab(tmp_path, {"acme": ("web", "gru")}, tls_listen=("127.0.0.1:0",),
                        cert_dir=str(certs)) as lab:
        proxy = lab.service.proxy
        assert (await request(lab.port)).status == 200  # a pooled connection for the lane and the fast path
        lane, fast = count_lane(proxy), count_fast(proxy)
        client = await Client.open(lab.port)
        try:
            r = await client.get(headers={"Keep_Alive": "timeout=5", "X_Custom": "kept"})
            assert r.status == 200 and [k for k, _ in r.json()["headers"] if "_" in k] == ["x_custom"]
            assert lane == [True]  # the lane drops a `Keep_Alive` itself
            r = await client.get(headers=SPOOFED)  # the lane declines: the fast path
            check_unspoofed(r.json()["headers"])
            assert lane == [True, False] and fast == [True]
            r = await client.get(headers={**SPOOFED, "Fly-Prefer-Region": "gru"})  # the general path
            check_unspoofed(r.json()["headers"])
            assert fast == [True, False]
            body = "".join(f"{k}: {v}\r\n" for k, v in SPOOFED.items() if k != "Transfer_Encoding")
            client.send(f"POST / HTTP/1.1\r\nHost: web.sixpn.test\r\n{body}Content-Length: 2\r\n\r\nhi".encode())
            r = await client.response()
            assert r.json()["body_len"] == 2
            check_unspoofed(r.json()["headers"])
        finally:
            client.close()
        # HTTP/2 (TLS, ALPN h2): the general path again, from another front end.
        h2 = await H2Client.open(lab.service.addresses[1][1], certs / "web.sixpn.test.crt")
        try:
            stream = h2.conn.get_next_available_stream_id()
            h2.conn.send_headers(stream, [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"https"),
                                          (b":authority", b"web.sixpn.test"),
                                          *((k.lower().encode(), v.encode()) for k, v in SPOOFED.items()
                                            if k != "Transfer_Encoding")], end_stream=True)
            h2.flush()
            data = b""
            ended = False
            while not ended:
                for event in await h2.events():
                    data += getattr(event, "data", b"") or b""
                    ended = ended or type(event).__name__ == "StreamEnded"
            check_unspoofed(json.loads(data)["headers"])
        finally:
            h2.writer.close()


# -- one client against the others: connections (issue 15, "edge connection cap shared by all") ---------------

async def open_from(source: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection from another loopback address (all of 127/8 is this host's): another client to the edge."""
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


def refused(proxy: EdgeProxy, code: str) -> int:
    """Connections the edge closed at once with `code` (its errors counter)."""
    found = re.search(rf'sixpn_edge_proxy_errors_total{{code="{code}"}} (\d+)', proxy.metrics.render())
    return int(found[1]) if found else 0


async def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


@aio
async def test_one_client_holding_connections_cannot_deny_another(tmp_path: Path) -> None:
    """The attacker (127.0.0.2) opens more idle connections than the worker holds; another client (127.0.0.1)
    is still served, every time."""
    async with edge_lab(tmp_path, {"acme": ("web", "gru")}, max_connections=60, max_connections_per_client=20,
                        first_head_timeout=30.0) as lab:
        proxy = lab.service.proxy
        held = [await open_from("127.0.0.2", lab.port) for _ in range(80)]
        try:
            await wait_for(lambda: len(proxy.connections) + refused(proxy, "PH04") + refused(proxy, "PH07") == 80)
            statuses = []
            for _ in range(20):
                try:
                    statuses.append((await request(lab.port)).status)
                except AssertionError:  # not an HTTP response: the edge closed the connection at once
                    statuses.append(0)
            assert statuses == [200] * 20
            assert refused(proxy, "PH07") == 60 and refused(proxy, "PH04") == 0
            assert proxy.clients == {"127.0.0.2": 20}
        finally:
            for _, writer in held:
                writer.close()
        await wait_for(lambda: not proxy.clients and not proxy.connections)


@aio
async def test_idle_and_trickling_new_connections_are_cut_early(tmp_path: Path) -> None:
    """Slowloris: a new connection gets `first_head_timeout` from the accept for its first head, idle or
    trickling; a client that sent a request keeps its keep-alive connection for the idle timeout."""
    async with edge_lab(tmp_path, {"acme": ("web", "gru")}, first_head_timeout=0.5, header_timeout=10.0,
                        idle_timeout=60.0) as lab:
        proxy = lab.service.proxy
        keep = await Client.open(lab.port)
        try:
            assert (await keep.get()).status == 200
            idle = [await open_from("127.0.0.2", lab.port) for _ in range(10)]
            trickle_reader, trickle = await open_from("127.0.0.2", lab.port)
            started = time.monotonic()
            # Bytes trickled in while the deadline runs (none after it: bytes sent to a closed socket would get
            # an RST that discards the 408 before it is read).
            for part in (b"GET / HTTP/1.1\r\n", b"Host: web.sixpn.test\r\n", b"X-A: 1\r\n"):
                trickle.write(part)
                await asyncio.sleep(0.1)
            async with asyncio.timeout(3):
                answer = await trickle_reader.read()
                for reader, _ in idle:
                    assert await reader.read() == b""  # closed by the edge, silently (nothing was asked)
            assert answer.startswith(b"HTTP/1.1 408") and b"PH03" in answer
            assert time.monotonic() - started < 3  # not header_timeout (10 s) from the first byte
            r = await keep.get()  # the keep-alive connection that sent a request is still there
            assert r.status == 200
            await wait_for(lambda: len(proxy.connections) == 1)
        finally:
            keep.close()


def test_a_contested_hostname_is_logged_once_and_routed_to_none(caplog: pytest.LogCaptureFixture) -> None:
    from catalog import App, State
    from edge_proxy.config import ProxyConfig

    proxy = EdgeProxy(ProxyConfig(access_log=""), "gru")
    state = State(version=1)
    state.put(App("web", "acme", "acme", {"hostnames": ["shop.example.com"]}))
    state.put(App("evil", "globex", "globex", {"hostnames": ["shop.example.com"]}))
    with caplog.at_level(logging.WARNING, logger="edge_proxy"):
        proxy.update(state)
        proxy.update(state)  # the same contest: not logged again
    assert [r.getMessage() for r in caplog.records] == [
        "hostnames listed by more than one app, routed to none of them: shop.example.com"]
    assert proxy.table.app_for_host_header(b"shop.example.com") is None


@aio
async def test_steering_and_replay_never_leave_the_apps_network(tmp_path: Path) -> None:
    """A client forcing another org's machine id, and an app replaying to one, reach nothing outside the app."""
    async with edge_lab(tmp_path, TENANTS) as lab:
        evil = lab.machines["evil"]
        r = await request(lab.port, headers={"fly-force-instance-id": evil})
        assert r.status == 503 and r.header("fly-proxy-error") == "PR09"
        r = await request(lab.port, headers={"fly-prefer-instance-id": evil})
        assert r.status == 200 and r.json()["machine"] == "acme"
        for replay in (f"instance={evil}", "app=elsewhere", f"prefer_instance={evil}"):
            lab.backends["acme"].replay, lab.backends["acme"].replay_first_only = replay, True
            r = await request(lab.port)
            assert r.status in (200, 502, 503), (replay, r)
            assert r.status != 200 or r.json()["machine"] == "acme", replay
        assert lab.backends["evil"].seen == []


@aio
async def test_new_connections_held_from_many_addresses_are_evicted_at_the_cap(tmp_path: Path) -> None:
    """A Slowloris from many addresses (each under the per-client limit) fills the worker's `max_connections`
    with new connections that never send a request: the oldest of them makes way for each new client."""
    async with edge_lab(tmp_path, {"acme": ("web", "gru")}, max_connections=40, first_head_timeout=30.0) as lab:
        proxy = lab.service.proxy
        busy = await Client.open(lab.port)  # a client in the middle of its keep-alive: never evicted
        held = [await open_from(f"127.0.0.{2 + i}", lab.port) for i in range(39)]
        try:
            assert (await busy.get()).status == 200
            await wait_for(lambda: len(proxy.connections) == 40)
            clients = [await Client.open(lab.port) for _ in range(20)]  # new clients that stay (keep-alive)
            try:
                assert [(await c.get()).status for c in clients] == [200] * 20
            finally:
                for c in clients:
                    c.close()
            assert refused(proxy, "PH08") == 20 and refused(proxy, "PH04") == 0
            assert (await busy.get()).status == 200
            closed = 0
            for reader, _ in held[:20]:  # the oldest ones went
                async with asyncio.timeout(2):
                    closed += await reader.read() == b""
            assert closed == 20
        finally:
            busy.close()
            for _, writer in held:
                writer.close()


@aio
async def test_absolute_form_target_is_the_host_the_app_sees(tmp_path: Path) -> None:
    """Routed by the target's authority (RFC 9112 §3.2.2): the machine must not see another Host than the one
    the edge routed by (a client could otherwise reach acme's app while presenting globex's name to it)."""
    async with edge_lab(tmp_path, TENANTS) as lab:
        for host in (b"evil.test", b"web.sixpn.test"):
            data = await raw(lab.port, b"GET http://web.sixpn.test/x HTTP/1.1\r\nHost: " + host
                             + b"\r\nConnection: close\r\n\r\n")
            r = parse_response(data)
            assert r.status == 200 and r.json()["machine"] == "acme"
            assert [v for k, v in r.json()["headers"] if k == "host"] == ["web.sixpn.test"]
            assert r.json()["target"] == "/x"
        bad = await raw(lab.port, b"GET http://user@evil.test/ HTTP/1.1\r\nHost: web.sixpn.test\r\n\r\n")
        assert bad.startswith(b"HTTP/1.1 400")
