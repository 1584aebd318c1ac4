"""TLS with SNI, the `sixpn proxy` CLI (standalone serve with workers + metrics, cert), config loading."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import sys
from pathlib import Path

import pytest

from edge_proxy.config import ConfigError, from_doc, parse_hostport
from edge_proxy.tls import make_self_signed
from tests.edge_proxy.harness import Backend, aio, make_catalog, parse_response

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


async def curl(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec("curl", "-sS", "-m", "10", *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.mark.skipif(not shutil.which("curl"), reason="needs curl")
@aio
async def test_http2_over_tls(tmp_path: Path) -> None:
    from tests.edge_proxy.harness import edge_lab

    certs = tmp_path / "certs"
    make_self_signed("web.sixpn.test", certs)
    async with edge_lab(tmp_path, {"w": ("web", "gru")}, tls_listen=("127.0.0.1:0",), cert_dir=str(certs)) as lab:
        port = lab.service.addresses[1][1]
        base = ["--cacert", str(certs / "web.sixpn.test.crt"), "--resolve", f"web.sixpn.test:{port}:127.0.0.1"]
        url = f"https://web.sixpn.test:{port}"
        code, out, err = await curl("--http2", *base, "-w", "\\n%{http_version} %{http_code}", f"{url}/")
        assert code == 0, err
        body, _, meta = out.rpartition("\n")
        assert meta == "2 200"
        sent = dict(json.loads(body)["headers"])
        assert sent["host"] == f"web.sixpn.test:{port}" and sent["x-forwarded-proto"] == "https"
        # A body up, a streamed body down, and two streams on one connection.
        code, out, err = await curl("--http2", *base, "--data-binary", "x" * 100_000, f"{url}/echo")
        assert code == 0 and json.loads(out)["body_len"] == 100_000, err
        fmt = "%{http_version} %{http_code} %{num_connects}\\n"
        code, out, err = await curl("--http2", *base, f"{url}/stream", f"{url}/big", "-o", "/dev/null",
                                    "-o", str(tmp_path / "big"), "-w", fmt)
        assert code == 0, err
        assert out.splitlines() == ["2 200 1", "2 200 0"]  # the second transfer reused the connection
        assert (tmp_path / "big").stat().st_size == 64 * 1024 * 1024
        # Concurrent streams multiplexed on one connection.
        urls = [f"{url}/stream", f"{url}/", f"{url}/", f"{url}/stream"]
        outs = [arg for _ in urls for arg in ("-o", "/dev/null")]
        code, out, err = await curl("--http2", *base, "-Z", "--parallel-max", "4", *urls, *outs, "-w", fmt)
        assert code == 0, err
        rows = [line.split() for line in out.splitlines()]
        assert [r[:2] for r in rows] == [["2", "200"]] * 4 and sum(int(r[2]) for r in rows) == 1, out
        # HTTP/1.1 over TLS is still there for clients that do not offer h2.
        code, out, err = await curl("--http1.1", *base, "-w", "\\n%{http_version}", f"{url}/")
        assert code == 0 and out.endswith("\n1.1"), err
