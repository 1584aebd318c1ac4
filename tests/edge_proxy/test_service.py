"""TLS with SNI, the `sixpn proxy` CLI (standalone serve with workers + metrics, cert), config loading."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import sys
from pathlib import Path

import pytest

from edge_proxy.config import ConfigError, from_doc, parse_hostport
from edge_proxy.tls import make_self_signed
from tests.edge_proxy.harness import Backend, make_catalog, parse_response
from tests.edge_proxy.test_proxy import aio

ROOT = Path(__file__).resolve().parents[2]


async def tls_get(port: int, name: str, ca: Path, version: ssl.TLSVersion) -> tuple[str, bytes]:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.minimum_version = ctx.maximum_version = version
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=name)
    try:
        sslobj = writer.get_extra_info("ssl_object")
        subject = dict(x[0] for x in sslobj.getpeercert()["subject"])["commonName"]
        writer.write(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        data = await reader.read(-1)
        return subject, data
    finally:
        writer.close()


@aio
async def test_tls_sni_certificate_per_hostname(tmp_path: Path) -> None:
    from tests.edge_proxy.harness import edge_lab

    certs = tmp_path / "certs"
    for name in ("web.sixpn.test", "api.sixpn.test"):
        make_self_signed(name, certs)
    assert (certs / "web.sixpn.test.key").stat().st_mode & 0o777 == 0o600
    machines = {"w": ("web", "gru"), "a": ("api", "gru")}
    async with edge_lab(tmp_path, machines, tls_listen=("127.0.0.1:0",), cert_dir=str(certs)) as lab:
        tls_port = lab.service.addresses[1][1]
        for name, machine in (("web.sixpn.test", "w"), ("api.sixpn.test", "a")):
            for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
                subject, data = await tls_get(tls_port, name, certs / f"{name}.crt", version)
                assert subject == name
                r = parse_response(data)
                assert r.json()["machine"] == machine
                sent = dict(r.json()["headers"])
                assert sent["x-forwarded-proto"] == "https" and sent["x-forwarded-ssl"] == "on"
        # Plain HTTP beside it.
        reader, writer = await asyncio.open_connection("127.0.0.1", lab.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: web.sixpn.test\r\nConnection: close\r\n\r\n")
        assert parse_response(await reader.read(-1)).status == 200
        writer.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def http_get(port: int, host: str, path: str = "/") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    try:
        return await reader.read(-1)
    finally:
        writer.close()


@aio
async def test_cli_standalone_workers_metrics_and_drain(tmp_path: Path) -> None:
    cat = make_catalog(tmp_path / "state")
    backend = Backend("m1")
    await backend.start()
    machine = cat.create_machine("web", "worker-gru", state="started")
    cat.close()
    port, mport = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sixpn.cli", "--state", str(tmp_path / "state"), "proxy", "serve",
        "--region", "gru", "--listen", f"127.0.0.1:{port}", "--workers", "2", "--metrics", f"127.0.0.1:{mport}",
        "--upstream-override", f"{machine.id}=127.0.0.1:{backend.port}", "--access-log", "off", "--static-rtt",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        for _ in range(200):
            with contextlib.suppress(OSError):
                data = await http_get(port, "web.sixpn.test")
                if data:
                    break
            await asyncio.sleep(0.05)
        statuses = [parse_response(await http_get(port, "web.sixpn.test")).status for _ in range(20)]
        assert statuses == [200] * 20
        text = b""
        for _ in range(60):  # workers publish their counters every second
            text = await http_get(mport, "metrics", "/metrics")
            if b'status="200"} 2' in text:
                break
            await asyncio.sleep(0.1)
        assert b"sixpn_edge_requests_total" in text
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await backend.stop()


def test_cli_cert_and_errors(tmp_path: Path) -> None:
    from sixpn.cli import main

    assert main(["proxy", "cert", "web.sixpn.test", "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "web.sixpn.test.crt").exists()
    state = tmp_path / "s"
    make_catalog(state).close()
    # Unknown host: one-line error, exit 1 (no traceback).
    assert main(["--state", str(state), "proxy", "serve", "--host", "nope", "--listen", "127.0.0.1:0"]) == 1
    assert main(["--state", str(state), "proxy", "serve", "--listen", "127.0.0.1:0"]) == 1


def test_config_loading() -> None:
    config = from_doc({"region": "gru", "listen": ["127.0.0.1:81"], "upstream-override": {"m": "127.0.0.1:1"}})
    assert config.listen == ("127.0.0.1:81",) and config.upstream_override == (("m", "127.0.0.1:1"),)
    with pytest.raises(ConfigError):
        from_doc({"regoin": "gru"})
    with pytest.raises(ConfigError):
        from_doc({"listen": "x"})
    assert parse_hostport("[::]:80") == ("::", 80)
    assert parse_hostport("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert parse_hostport(":81") == ("0.0.0.0", 81)
    with pytest.raises(ConfigError):
        parse_hostport("a:b")
