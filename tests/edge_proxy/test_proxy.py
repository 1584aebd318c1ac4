"""The edge proxy over loopback: routing, headers, retries, replay, limits (fake machines on 127.0.0.1)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.edge_proxy.harness import aio, edge_lab, raw, request


@aio
async def test_routes_by_host_to_local_region(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, {"gru1": ("web", "gru"), "gig1": ("web", "gig"), "api1": ("api", "gru")}) as lab:
        for _ in range(5):
            r = await request(lab.port)
            assert r.status == 200
            assert r.json()["machine"] == "gru1"
        r = await request(lab.port, host="api.sixpn.test:80")
        assert r.json()["machine"] == "api1"
        r = await request(lab.port, host="nope.sixpn.test")
        assert r.status == 404 and r.header("fly-proxy-error") == "PR02"


@aio
async def test_configured_hostname(tmp_path: Path) -> None:
    config = {"app": "web", "hostnames": ["www.example.test"], "http_service": {"internal_port": 8080}}
    async with edge_lab(tmp_path, {"gru1": ("web", "gru")}, app_config=config) as lab:
        r = await request(lab.port, host="WWW.example.test")
        assert r.status == 200 and r.json()["machine"] == "gru1"


@aio
async def test_stopped_local_machine_goes_to_nearest_region(tmp_path: Path) -> None:
    machines = {"gru1": ("web", "gru"), "gig1": ("web", "gig"), "iad1": ("web", "iad")}
    async with edge_lab(tmp_path, machines) as lab:
        lab.catalog.set_machine_state(lab.machines["gru1"], "stopped")
        lab.sync()
        for _ in range(5):
            assert (await request(lab.port)).json()["machine"] == "gig1"
        lab.catalog.set_machine_state(lab.machines["gru1"], "started")
        lab.sync()
        assert (await request(lab.port)).json()["machine"] == "gru1"


@aio
async def test_no_machines_is_coded_503(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, {"gru1": ("web", "gru")}) as lab:
        lab.catalog.set_machine_state(lab.machines["gru1"], "stopped")
        lab.sync()
        r = await request(lab.port)
        assert r.status == 503 and r.header("fly-proxy-error") == "PR01"
        assert r.header("fly-request-id")


@aio
async def test_request_and_response_headers(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, {"gru1": ("web", "gru")}) as lab:
        r = await request(lab.port, headers={
            "X-Forwarded-For": "203.0.113.9", "Fly-Client-IP": "6.6.6.6", "Connection": "close, X-Drop",
            "X-Drop": "secret", "Keep-Alive": "timeout=5", "Fly-Replay-Src": "forged",
        })
        sent = {k: v for k, v in r.json()["headers"]}
        assert sent["fly-client-ip"] == "127.0.0.1"
        assert sent["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
        assert sent["x-forwarded-proto"] == "http" and sent["x-forwarded-ssl"] == "off"
        assert sent["x-forwarded-port"] == str(lab.port) == sent["fly-forwarded-port"]
        assert sent["fly-region"] == "gru"
        assert "sixpn-edge" in sent["via"]
        assert sent["fly-request-id"]
        for hop in ("x-drop", "keep-alive", "fly-replay-src"):
            assert hop not in sent
        assert r.header("server") == "sixpn-edge"
        assert r.header("via") and r.header("fly-request-id") == sent["fly-request-id"]


@aio
async def test_force_and_prefer_headers(tmp_path: Path) -> None:
    machines = {"gru1": ("web", "gru"), "iad1": ("web", "iad")}
    async with edge_lab(tmp_path, machines) as lab:
        r = await request(lab.port, headers={"fly-prefer-region": "iad"})
        assert r.json()["machine"] == "iad1"
        r = await request(lab.port, headers={"fly-prefer-region": "syd"})
        assert r.json()["machine"] == "gru1"
        r = await request(lab.port, headers={"fly-force-region": "syd"})
        assert r.status == 503 and r.header("fly-proxy-error") == "PR09"
        r = await request(lab.port, headers={"fly-force-instance-id": lab.machines["iad1"]})
        assert r.json()["machine"] == "iad1"
        r = await request(lab.port, headers={"fly-prefer-instance-id": "00000000000000"})
        sent = dict(r.json()["headers"])
        assert r.json()["machine"] == "gru1" and sent["fly-preferred-instance-unavailable"] == "true"


@aio
async def test_connect_failure_marks_down_and_retries(tmp_path: Path) -> None:
    machines = {"gru1": ("web", "gru"), "gig1": ("web", "gig")}
    async with edge_lab(tmp_path, machines) as lab:
        await lab.backends["gru1"].stop()
        r = await request(lab.port, method="POST", body=b"payload")
        assert r.status == 200 and r.json()["machine"] == "gig1" and r.json()["body_len"] == 7
        assert not lab.service.proxy.health.healthy(lab.machines["gru1"])


@aio
async def test_refusing_machine_retried_for_idempotent_only(tmp_path: Path) -> None:
    machines = {"gru1": ("web", "gru"), "gig1": ("web", "gig")}
    async with edge_lab(tmp_path, machines) as lab:
        lab.backends["gru1"].fail_next = 1
        r = await request(lab.port)
        assert r.status == 200 and r.json()["machine"] == "gig1"
    async with edge_lab(tmp_path / "2", machines) as lab:
        lab.backends["gru1"].fail_next = 1
        r = await request(lab.port, method="POST", body=b"x")
        assert r.status == 502 and r.header("fly-proxy-error") == "PR04"


@aio
async def test_fly_replay_region_and_src(tmp_path: Path) -> None:
    machines = {"gru1": ("web", "gru"), "sjc1": ("web", "sjc")}
    async with edge_lab(tmp_path, machines) as lab:
        lab.backends["gru1"].replay = "region=sjc;state=abc"
        r = await request(lab.port, method="POST", body=b"hello")
        doc = r.json()
        assert doc["machine"] == "sjc1" and doc["body_len"] == 5
        src = dict(doc["headers"])["fly-replay-src"]
        assert src.startswith(f"instance={lab.machines['gru1']};region=gru;t=") and src.endswith(";state=abc")
        assert r.header("fly-replay") is None


@aio
async def test_fly_replay_instance_elsewhere_and_app(tmp_path: Path) -> None:
    machines = {"gru1": ("web", "gru"), "gru2": ("web", "gru"), "api1": ("api", "iad"), "x1": ("elsewhere", "gru")}
    async with edge_lab(tmp_path, machines) as lab:
        for b in ("gru1", "gru2"):
            lab.backends[b].replay = "app=api"
        assert (await request(lab.port)).json()["machine"] == "api1"
        for b in ("gru1", "gru2"):
            lab.backends[b].replay = "app=elsewhere"
        r = await request(lab.port)
        assert r.status == 502 and r.header("fly-proxy-error") == "PR08"
        lab.backends["gru1"].replay = lab.backends["gru2"].replay = ""
        lab.backends["gru1"].replay = f"instance={lab.machines['gru2']}"
        lab.backends["gru2"].replay = ""
        for _ in range(4):
            assert (await request(lab.port)).json()["machine"] == "gru2"
        lab.backends["gru1"].replay = "elsewhere=true"
        for _ in range(4):
            assert (await request(lab.port)).json()["machine"] == "gru2"


@aio
async def test_replay_limits(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, {"gru1": ("web", "gru"), "gru2": ("web", "gru")}) as lab:
        for b in lab.backends.values():
            b.replay = "region=gru"
        r = await request(lab.port)
        assert r.status == 508 and r.header("fly-proxy-error") == "PR08"
        assert sum(len(b.seen) for b in lab.backends.values()) == 11  # first try + 10 replays
        r = await request(lab.port, method="POST", body=b"z" * ((1 << 20) + 1))
        assert r.status == 413 and r.header("fly-proxy-error") == "PR07"
        for b in lab.backends.values():
            b.replay = "bogus=1"
        r = await request(lab.port)
        assert r.status == 502 and r.header("fly-proxy-error") == "PR08"


@aio
async def test_hard_limit_queues_then_503(tmp_path: Path) -> None:
    config = {"app": "web", "http_service": {"internal_port": 8080, "concurrency": {
        "type": "requests", "soft_limit": 1, "hard_limit": 1}}}
    async with edge_lab(tmp_path, {"gru1": ("web", "gru")}, app_config=config, queue_timeout=0.5) as lab:
        # Hold the only slot with a request whose body never finishes.
        reader, writer = await asyncio.open_connection("127.0.0.1", lab.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: web.sixpn.test\r\nContent-Length: 10\r\n\r\nab")
        await writer.drain()
        for _ in range(100):
            if lab.service.proxy.load.load(lab.machines["gru1"], "requests") == 1:
                break
            await asyncio.sleep(0.01)
        r = await request(lab.port)
        assert r.status == 503 and r.header("fly-proxy-error") == "PR03"
        # A queued request is served as soon as the slot frees.
        pending = asyncio.ensure_future(request(lab.port))
        await asyncio.sleep(0.1)
        writer.write(b"cdefghij")
        await writer.drain()
        r = await pending
        assert r.status == 200
        first = await reader.readuntil(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 200")
        writer.close()


@aio
async def test_soft_limit_spills_to_other_local_machine(tmp_path: Path) -> None:
    config = {"app": "web", "http_service": {"internal_port": 8080, "concurrency": {
        "type": "connections", "soft_limit": 1, "hard_limit": 5}}}
    machines = {"gru1": ("web", "gru"), "gru2": ("web", "gru")}
    async with edge_lab(tmp_path, machines, app_config=config) as lab:
        # Two keep-alive client connections: connections mode counts each on its machine.
        conns = []
        seen = set()
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", lab.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: web.sixpn.test\r\n\r\n")
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")
            conns.append(writer)
        for name, b in lab.backends.items():
            if b.seen:
                seen.add(name)
        assert seen == {"gru1", "gru2"}
        for w in conns:
            w.close()


@aio
async def test_active_http_check_takes_machine_out(tmp_path: Path) -> None:
    config = {"app": "web", "http_service": {"internal_port": 8080, "checks": [
        {"interval": "100ms", "timeout": "1s", "path": "/health"}]}}
    machines = {"gru1": ("web", "gru"), "gig1": ("web", "gig")}
    async with edge_lab(tmp_path, machines, app_config=config) as lab:
        lab.backends["gru1"].status = 302  # redirects fail checks
        for _ in range(100):
            if not lab.service.proxy.health.healthy(lab.machines["gru1"]):
                break
            await asyncio.sleep(0.05)
        r = await request(lab.port)
        assert r.json()["machine"] == "gig1"
        lab.backends["gru1"].status = 200
        for _ in range(100):
            if lab.service.proxy.health.healthy(lab.machines["gru1"]):
                break
            await asyncio.sleep(0.05)
        assert (await request(lab.port)).json()["machine"] == "gru1"


@aio
async def test_access_log_and_metrics(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    async with edge_lab(tmp_path, {"gru1": ("web", "gru")}) as lab:
        lab.service.proxy.access_log = log.open("a", buffering=1)
        await request(lab.port)
        await request(lab.port, host="nope.sixpn.test")
        await raw(lab.port, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        lab.service.proxy.access_log.close()
        lines = log.read_text().splitlines()
        assert '"status": 200' in lines[0] and '"machine": "' + lab.machines["gru1"] in lines[0]
        assert '"error": "PR02"' in lines[1]
        assert '"error": "PH01"' in lines[2]
        lab.service.proxy.publish_gauges()
        text = lab.service.proxy.metrics.render()
        assert 'sixpn_edge_requests_total{app="web",region="gru",status="200"} 1' in text
        assert 'sixpn_edge_proxy_errors_total{code="PR02"} 1' in text
        assert "sixpn_edge_machine_load" in text and "sixpn_edge_upstream_connect_seconds_bucket" in text


@aio
async def test_dead_pooled_connection_retried_on_same_machine(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, {"gru1": ("web", "gru")}) as lab:
        assert (await request(lab.port)).status == 200  # leaves a pooled connection
        lab.backends["gru1"].fail_next = 1  # the machine drops the next request on the floor
        r = await request(lab.port)
        assert r.status == 200 and r.json()["machine"] == "gru1"
        assert lab.service.proxy.health.healthy(lab.machines["gru1"])  # not marked down for a stale socket
        assert lab.service.proxy.pool.connects == 2


@aio
async def test_connections_mode_keep_alive_does_not_block_itself(tmp_path: Path) -> None:
    config = {"app": "web", "http_service": {"internal_port": 8080, "concurrency": {
        "type": "connections", "soft_limit": 1, "hard_limit": 1}}}
    async with edge_lab(tmp_path, {"gru1": ("web", "gru")}, app_config=config, queue_timeout=0.3) as lab:
        reader, writer = await asyncio.open_connection("127.0.0.1", lab.port)
        for _ in range(3):
            writer.write(b"GET / HTTP/1.1\r\nHost: web.sixpn.test\r\n\r\n")
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            await reader.readuntil(b"}")
        # A second client connection finds the machine at its hard limit: queued, then 503.
        r = await request(lab.port)
        assert r.status == 503 and r.header("fly-proxy-error") == "PR03"
        writer.close()


@aio
async def test_tcp_check_takes_a_dead_machine_out_without_traffic(tmp_path: Path) -> None:
    config = {"app": "web", "http_service": {"internal_port": 8080, "tcp_checks": [
        {"interval": "100ms", "timeout": "500ms"}]}}
    async with edge_lab(tmp_path, {"gru1": ("web", "gru"), "gig1": ("web", "gig")}, app_config=config) as lab:
        await lab.backends["gru1"].stop()
        for _ in range(100):
            if not lab.service.proxy.health.healthy(lab.machines["gru1"]):
                break
            await asyncio.sleep(0.05)
        assert not lab.service.proxy.health.healthy(lab.machines["gru1"])
        assert lab.service.proxy.health.active[lab.machines["gru1"]] is False  # an active result, not passive
        assert (await request(lab.port)).json()["machine"] == "gig1"


@aio
async def test_fly_replay_prefer_instance_falls_back(tmp_path: Path) -> None:
    machines = {"gru1": ("web", "gru"), "gru2": ("web", "gru")}
    async with edge_lab(tmp_path, machines) as lab:
        # The preferred instance does not exist: the replay falls back to the normal choice and says so.
        gru1 = lab.backends["gru1"]
        gru1.replay, gru1.replay_first_only = "prefer_instance=00000000000000", True
        r = await request(lab.port, headers={"fly-force-instance-id": lab.machines["gru1"]})
        doc = r.json()
        assert r.status == 200 and doc["machine"] in ("gru1", "gru2")
        sent = dict(doc["headers"])
        assert sent["fly-preferred-instance-unavailable"] == "true"
        assert sent["fly-replay-src"].startswith(f"instance={lab.machines['gru1']};region=gru;")
