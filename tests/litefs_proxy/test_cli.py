"""`sixpn litefs-proxy ...` as processes: config errors name the key; `serve` runs stand-in, app and proxy."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

CLI = [sys.executable, "-m", "sixpn.cli", "litefs-proxy"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_config_error_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "litefs.yml"
    cfg.write_text("fuse:\n  dir: /m\nproxy:\n  addr: ':1'\n  target: 'h:2'\n  db: db\n  max-lagg: 1s\n")
    out = subprocess.run([*CLI, "check", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and out.stderr.strip() == "sixpn: proxy.max-lagg: unknown key"
    cfg.write_text("fuse:\n  dir: /m\nproxy:\n  addr: ':1'\n  target: 'h:2'\n  db: db\n  max-lag: 0\n")
    out = subprocess.run([*CLI, "check", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "max-lag 0s" in out.stdout


def _http(method: str, url: str, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def test_serve_runs_the_standin_the_app_and_the_proxy(tmp_path: Path) -> None:
    port, app_port, api_port = free_port(), free_port(), free_port()
    mount = tmp_path / "mnt"
    cfg = tmp_path / "litefs.toml"
    cfg.write_text(f'[fuse]\ndir = "{mount}"\n[proxy]\naddr = "127.0.0.1:{port}"\ntarget = "127.0.0.1:{app_port}"\n'
                   f'db = "notes.db"\n[replicator]\nrole = "primary"\naddr = "127.0.0.1:{api_port}"\n'
                   f'hostname = "m-test"\n')
    app = (f"{sys.executable} -m sixpn.cli litefs-proxy demo-app --db {mount}/notes.db --host 127.0.0.1 "
           f"--port {app_port}")
    proc = subprocess.Popen([*CLI, "serve", "--config", str(cfg), "--exec", app], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status, _, _ = _http("GET", f"http://127.0.0.1:{port}/litefs/health")
                if status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.1)
        status, headers, body = _http("POST", f"http://127.0.0.1:{port}/notes", b"hi")
        assert status == 201 and json.loads(body)["id"] == 1
        assert headers["set-cookie"].startswith("__txid=") and headers["set-cookie"].endswith("; HttpOnly")
        cookie = headers["set-cookie"].split(";")[0]
        status, _, body = _http("GET", f"http://127.0.0.1:{port}/notes/1", headers={"Cookie": cookie})
        assert (status, body) == (200, b"hi")
        status, _, body = _http("GET", f"http://127.0.0.1:{api_port}/info")
        assert status == 200 and json.loads(body)["hostname"] == "m-test"
        assert (mount / "notes.db-pos").read_text().startswith(cookie.split("=")[1] + "/")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    assert proc.returncode == 0


def test_serve_ends_with_the_app_and_its_status(tmp_path: Path) -> None:
    cfg = tmp_path / "litefs.yml"
    cfg.write_text(f"fuse:\n  dir: {tmp_path}/m\nproxy:\n  addr: '127.0.0.1:{free_port()}'\n"
                   f"  target: '127.0.0.1:1'\n  db: db\n")
    (tmp_path / "m").mkdir()
    out = subprocess.run([*CLI, "serve", "--config", str(cfg), "--exec", "sleep 0.3; exit 3"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 3, out.stderr


def test_serve_without_target_skips_the_proxy(tmp_path: Path) -> None:
    """LiteFS (cmd/litefs/mount_linux.go:520-524): no proxy target -> no proxy, the rest still runs."""
    cfg = tmp_path / "litefs.yml"
    cfg.write_text(f"fuse:\n  dir: {tmp_path}/m\nproxy:\n  addr: ':$PROXY_PORT'\n  db: db\n")
    (tmp_path / "m").mkdir()
    out = subprocess.run([*CLI, "serve", "--config", str(cfg), "--exec", "exit 4"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 4 and "no proxy target set, skipping proxy" in out.stderr
    out = subprocess.run([*CLI, "check", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("proxy: none")
