"""Cross-tenant attacks on the edge over loopback (issue 15): each test tries the attack, on every request path
(the lane, the fast path, the general path)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.edge_proxy.harness import Lab, aio, edge_lab, request
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
