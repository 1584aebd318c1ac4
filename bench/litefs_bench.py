"""litefs_proxy benchmark: reads through the proxy against nginx proxying the same app and against the bare
app, and the cost of 1,000 readers waiting.

1. A minimal upstream (uvloop, fixed 13-byte response) in its own process; the proxy (`sixpn litefs-proxy
   serve`) in another, its mount a temp dir that says "primary"; nginx (one worker, keep-alive upstream pool)
   in front of the same upstream. `wrk` (2 threads, 50 connections, 5 s, keep-alive) hits the upstream
   directly, through nginx and through the proxy: reads without a cookie, LiteFS's common case. Then 3,000
   sequential requests on one connection each way: the added latency without queueing.
2. First, on the fresh proxy: its CPU time (utime+stime from /proc, 10 ms ticks) over 4 s with 1,000 idle
   keep-alive connections (the baseline: what holding connections costs), then with 1,000 connections each
   waiting on a GET whose `__txid` is one ahead of the position; then the position moves once and all 1,000
   must be answered. The difference is what waiting costs.

Bounded: ~20 s, loopback only. Ends with one `key=value` line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from litefs_proxy.mountfiles import Pos, format_lag, format_pos, write_atomic  # noqa: E402

WAITERS = 1000
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nhello, world\n"


NGINX_CONF = """
worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off; client_body_temp_path {d}/cb; proxy_temp_path {d}/pt; fastcgi_temp_path {d}/ft;
  uwsgi_temp_path {d}/ut; scgi_temp_path {d}/st; keepalive_requests 1000000;
  upstream app {{ server 127.0.0.1:{target}; keepalive 100; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
                  proxy_set_header Host $host; proxy_buffering off; }}
  }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Upstream(asyncio.Protocol):
    """Answers every request (no bodies in this bench) with RESPONSE; keep-alive, pipelining-safe."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            self.buf = self.buf[end + 4:]
            self.transport.write(RESPONSE)  # type: ignore[attr-defined]


def run_upstream(port: int) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Upstream, "127.0.0.1", port, backlog=2048)
        async with server:
            await asyncio.Event().wait()

    uvloop.run(main())


def spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def wrk(port: int) -> tuple[float, float]:
    """(requests/s, p99 ms) from wrk's --latency report."""
    out = subprocess.run(["wrk", "-t2", "-c50", "-d5s", "--latency", f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return rps, p99


def probe(port: int, count: int = 3000) -> tuple[float, float]:
    """(p50 ms, p99 ms) of `count` sequential GETs on one keep-alive connection: the per-hop cost, unqueued."""
    times = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            start = time.perf_counter()
            sock.sendall(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n")
            got = b""
            while not got.endswith(b"hello, world\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    raise RuntimeError("connection closed")
                got += chunk
            times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.99)]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


async def _cpu_over(pid: int, seconds: float) -> float:
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return (cpu_seconds(pid) - cpu0) * 1000 / (time.monotonic() - t0)


async def waiters(port: int, mount: Path, pid: int) -> tuple[float, float, float, int]:
    """(proxy CPU ms/s with 1,000 idle connections, with 1,000 waiting reads, seconds until all answered after
    the position moved, how many were answered 200)."""
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(WAITERS)]
    await asyncio.sleep(1.5)
    idle_cpu = await _cpu_over(pid, 4.0)  # the connections alone (the HTTP machinery's own timers)
    for _, writer in idle:
        writer.close()
    await asyncio.sleep(0.5)
    request = b"GET / HTTP/1.1\r\nHost: b\r\nCookie: __txid=0000000000000002\r\n\r\n"
    conns = []
    for _ in range(WAITERS):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        conns.append((reader, writer))
    await asyncio.sleep(1.5)  # all requests parsed and parked
    wait_cpu = await _cpu_over(pid, 4.0)
    moved = time.monotonic()
    write_atomic(mount / "db-pos", format_pos(Pos(2, 0)))
    answers = await asyncio.gather(*(reader.readuntil(b"hello, world\n") for reader, _ in conns))
    elapsed = time.monotonic() - moved
    for _, writer in conns:
        writer.close()
    return idle_cpu, wait_cpu, elapsed, sum(1 for a in answers if a.startswith(b"HTTP/1.1 200"))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--upstream":
        run_upstream(int(sys.argv[2]))
        return
    if shutil.which("wrk") is None or shutil.which("nginx") is None:
        raise SystemExit("needs wrk and nginx")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    up_port, proxy_port, nginx_port = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="litefs-bench-") as tmp:
        mount = Path(tmp) / "mnt"
        mount.mkdir()
        write_atomic(mount / ".lag", format_lag(0))
        write_atomic(mount / "db-pos", format_pos(Pos(1, 0)))
        config = Path(tmp) / "litefs.yml"
        config.write_text(f"fuse:\n  dir: {mount}\nproxy:\n  addr: '127.0.0.1:{proxy_port}'\n"
                          f"  target: '127.0.0.1:{up_port}'\n  db: db\n  txid-timeout: 30s\n")
        (Path(tmp) / "nginx.conf").write_text(NGINX_CONF.format(d=tmp, port=nginx_port, target=up_port))
        try:
            procs.append(spawn([sys.executable, __file__, "--upstream", str(up_port)]))
            procs.append(spawn([sys.executable, "-m", "sixpn.cli", "litefs-proxy", "serve", "--config", str(config)]))
            procs.append(spawn(["nginx", "-p", tmp, "-c", str(Path(tmp) / "nginx.conf")]))
            wait_port(up_port)
            wait_port(proxy_port)
            wait_port(nginx_port)
            # Waiters first, on the fresh proxy: wrk leaves connections and pooled upstreams behind.
            idle_ms, cpu_ms, release_s, answered = asyncio.run(waiters(proxy_port, mount, procs[1].pid))
            direct_rps, direct_p99 = wrk(up_port)
            nginx_rps, nginx_p99 = wrk(nginx_port)
            proxy_rps, proxy_p99 = wrk(proxy_port)
            direct_one = probe(up_port)
            nginx_one = probe(nginx_port)
            proxy_one = probe(proxy_port)
        finally:
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(10)
    ratio = proxy_rps / direct_rps
    print(f"direct: {direct_rps:.0f} req/s, p99 {direct_p99:.2f} ms; through nginx: {nginx_rps:.0f} req/s, "
          f"p99 {nginx_p99:.2f} ms; through the proxy: {proxy_rps:.0f} req/s, p99 {proxy_p99:.2f} ms "
          f"(wrk -t2 -c50 -d5s, keep-alive, 2 cores shared by all processes)")
    print(f"one request at a time: direct p50 {direct_one[0]:.3f} ms p99 {direct_one[1]:.3f} ms; through nginx "
          f"p50 {nginx_one[0]:.3f} ms p99 {nginx_one[1]:.3f} ms; through the proxy "
          f"p50 {proxy_one[0]:.3f} ms p99 {proxy_one[1]:.3f} ms")
    print(f"{WAITERS} readers waiting on a position: proxy CPU {cpu_ms:.1f} ms/s, against {idle_ms:.1f} ms/s for "
          f"{WAITERS} idle keep-alive connections (the HTTP layer's timeout sweep); all {answered} answered "
          f"{release_s * 1000:.0f} ms after the position moved")
    print(f"direct_rps={direct_rps:.0f} nginx_rps={nginx_rps:.0f} proxy_rps={proxy_rps:.0f} "
          f"vs_nginx={proxy_rps / nginx_rps:.3f} nginx_vs_direct={nginx_rps / direct_rps:.3f} rps_ratio={ratio:.3f} "
          f"nginx_added_p50_ms_unloaded={nginx_one[0] - direct_one[0]:.3f} "
          f"added_p99_ms={proxy_p99 - direct_p99:.2f} added_p99_ms_unloaded={proxy_one[1] - direct_one[1]:.3f} "
          f"added_p50_ms_unloaded={proxy_one[0] - direct_one[0]:.3f} waiters={WAITERS} "
          f"waiting_cpu_ms_per_s={cpu_ms:.2f} "
          f"idle_conns_cpu_ms_per_s={idle_ms:.2f} waiting_extra_cpu_ms_per_s={cpu_ms - idle_ms:.2f} "
          f"release_ms={release_s * 1000:.0f} answered={answered}")


if __name__ == "__main__":
    main()
