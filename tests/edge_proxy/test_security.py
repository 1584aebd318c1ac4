"""Cross-tenant attacks on the edge over loopback (issue 15): each test tries the attack, on every request path
(the lane, the fast path, the general path)."""

from __future__ import annotations

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
