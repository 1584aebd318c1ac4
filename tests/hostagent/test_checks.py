"""The agent's checks against tiny loopback servers: HTTP status classes, TCP connects, timeouts, overall health."""

from __future__ import annotations

import asyncio

from catalog import appconfig
from hostagent.checks import Check, checks_of, overall, run_once


async def _serve(status: bytes, delay: float = 0.0) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(delay)
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def http(port: int, timeout: float = 1.0) -> Check:
    return Check(port, 1.0, timeout, 0.0, appconfig.HttpCheck(path="/healthz"))


def test_http_checks_pass_on_2xx_3xx_and_fail_otherwise() -> None:
    async def go() -> list[bool]:
        results = []
        for status in (b"200 OK", b"302 Found", b"404 Not Found", b"500 Oops"):
            server, port = await _serve(status)
            async with server:
                results.append(await run_once("127.0.0.1", http(port)))
        return results

    assert asyncio.run(go()) == [True, True, False, False]


def test_a_slow_answer_fails_by_the_timeout_and_a_closed_port_fails_at_once() -> None:
    async def go() -> tuple[bool, bool, bool]:
        server, port = await _serve(b"200 OK", delay=1.0)
        async with server:
            slow = await run_once("127.0.0.1", http(port, timeout=0.2))
            tcp_open = await run_once("127.0.0.1", Check(port, 1.0, 1.0, 0.0))
        closed = await run_once("127.0.0.1", Check(port, 1.0, 1.0, 0.0))
        return slow, tcp_open, closed

    assert asyncio.run(go()) == (False, True, False)


def test_overall_health() -> None:
    assert overall([]) == "" and overall([None, True]) == ""
    assert overall([True, True]) == "passing"
    assert overall([True, False]) == "critical" and overall([None, False]) == "critical"


def test_checks_of_the_config_per_process_group() -> None:
    config = appconfig.loads(
        '[processes]\napp = "a"\nworker = "w"\n'
        '[http_service]\ninternal_port = 8080\nprocesses = ["app"]\n'
        '[[http_service.checks]]\npath = "/healthz"\ninterval = "2s"\n'
        '[[services]]\ninternal_port = 9000\nprocesses = ["worker"]\n[[services.tcp_checks]]\ninterval = "5s"\n'
        '[[services.http_checks]]\npath = "/w"\n'
    )
    app = checks_of(config, "app")
    assert [(c.port, c.interval, c.http.path if c.http else None) for c in app] == [(8080, 2.0, "/healthz")]
    worker = checks_of(config, "worker")
    assert sorted((c.port, c.http.path if c.http else "tcp") for c in worker) == [(9000, "/w"), (9000, "tcp")]
    assert repr(app[0]) == "<Check http GET /healthz :8080 every 2.0s>"
