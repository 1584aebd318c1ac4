"""Edge proxy vs nginx as an equivalent reverse proxy: same backend, same wrk run, one worker each.

The backend is a third nginx (one worker) answering a fixed 200 on loopback, so both proxies are the thing
measured. The edge runs `sixpn proxy serve` with a temporary catalog (Host routing, the routing core, all
request/response headers on; access log off on both), and once more with `--no-lane` (every request through
httptools and the fast path) for comparison. Ends with one `key=value ...` line; `c_ext=1` when the lane's
C recognizers (edge_proxy/http1/_simple.c) were built.

    .venv/bin/python bench/proxy_bench.py [--duration 5] [--connections 50] [--browser]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from catalog import Catalog  # noqa: E402
from edge_proxy.http1.simple import ACCELERATED  # noqa: E402

BACKEND_CONF = """
worker_processes 1; daemon off; pid {d}/backend.pid; error_log {d}/backend.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off; client_body_temp_path {d}/cb; proxy_temp_path {d}/pt; fastcgi_temp_path {d}/ft;
  uwsgi_temp_path {d}/ut; scgi_temp_path {d}/st; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port};
    location / {{ default_type text/plain; return 200 "hello from the backend\\n"; }} }}
}}
"""

PROXY_CONF = """
worker_processes 1; daemon off; pid {d}/proxy.pid; error_log {d}/proxy.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off; client_body_temp_path {d}/cb2; proxy_temp_path {d}/pt2; fastcgi_temp_path {d}/ft2;
  uwsgi_temp_path {d}/ut2; scgi_temp_path {d}/st2; keepalive_requests 1000000;
  upstream machine {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://machine; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-Port $server_port;
      proxy_set_header Fly-Client-IP $remote_addr; proxy_set_header Fly-Region gru;
      proxy_set_header Via "1.1 nginx"; proxy_set_header Fly-Request-Id $request_id;
      add_header Via "1.1 nginx"; add_header Fly-Request-Id $request_id;
    }}
  }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing listening on port {port}")


@contextlib.contextmanager
def process(argv: list[str], **kw: object) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its children's threads (nginx: master + worker)."""
    total = 0.0
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (nginx: master + worker), MiB."""
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def measured(pid: int, port: int, duration: int, connections: int) -> tuple[float, float, float, float, float]:
    """wrk figures plus the proxy's CPU microseconds per request (independent of other load on the box) and its
    RSS after the run."""
    before = cpu_seconds(pid)
    rps, p50, p99 = wrk(port, "web.sixpn.test", duration, connections)
    used = cpu_seconds(pid) - before
    return rps, p50, p99, used / (rps * duration) * 1e6, rss_mib(pid)


#: `--browser`: the fields a browser sends with a page request (wrk's default request carries only Host).
BROWSER = ("User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
           "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
           "Accept-Language: en-US,en;q=0.5", "Accept-Encoding: gzip, deflate, br", "Connection: keep-alive",
           "Cookie: session=6f1c2d3e4a5b; theme=dark", "Upgrade-Insecure-Requests: 1")
EXTRA_HEADERS: list[str] = []


def wrk(port: int, host: str, duration: int, connections: int) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms)."""
    extra = [arg for field in EXTRA_HEADERS for arg in ("-H", field)]
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-H", f"Host: {host}", *extra,
         f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"wrk saw {errors.group(1)} errors against port {port}:\n{out}")

    def pct(label: str) -> float:
        match = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out)
        assert match, out
        value = float(match.group(1))
        return value / 1000 if match.group(2) == "us" else value * 1000 if match.group(2) == "s" else value

    return rps, pct("50"), pct("99")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--browser", action="store_true", help="send a browser's request fields, not just Host")
    args = parser.parse_args()
    if args.browser:
        EXTRA_HEADERS.extend(BROWSER)
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    tmp = Path(tempfile.mkdtemp(prefix="sixpn-bench-"))
    try:
        run(tmp, args.duration, args.connections)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(tmp: Path, duration: int, connections: int) -> None:
    backend, nginx_port, edge_port = free_port(), free_port(), free_port()
    (tmp / "backend.conf").write_text(BACKEND_CONF.format(d=tmp, port=backend))
    (tmp / "proxy.conf").write_text(PROXY_CONF.format(d=tmp, port=nginx_port, backend=backend))
    with Catalog(tmp / "state") as cat:
        cat.create_org("bench")
        cat.create_app("web", "bench", config={"app": "web", "http_service": {"internal_port": 8080}})
        cat.register_host("worker-gru", "gru", "worker", "192.0.2.10")
        machine = cat.create_machine("web", "worker-gru", state="started")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    edge_cmd = [sys.executable, "-m", "sixpn.cli", "--state", str(tmp / "state"), "proxy", "serve", "--region",
                "gru", "--listen", f"127.0.0.1:{edge_port}", "--access-log", "off", "--static-rtt", "--metrics", "off",
                "--upstream-override", f"{machine.id}=127.0.0.1:{backend}"]
    plain_port = free_port()
    plain_cmd = [*edge_cmd, "--no-lane"]
    plain_cmd[plain_cmd.index(f"127.0.0.1:{edge_port}")] = f"127.0.0.1:{plain_port}"
    with process(["nginx", "-p", str(tmp), "-c", str(tmp / "backend.conf")]), \
            process(["nginx", "-p", str(tmp), "-c", str(tmp / "proxy.conf")]) as nginx_proc, \
            process(edge_cmd, env=env) as edge_proc, process(plain_cmd, env=env) as plain_proc:
        for port in (backend, nginx_port, edge_port, plain_port):
            wait_port(port)
        for port in (edge_port, plain_port, nginx_port):
            wrk(port, "web.sixpn.test", 1, connections)  # warm up pools
        direct = wrk(backend, "web.sixpn.test", duration, connections)
        nginx = measured(nginx_proc.pid, nginx_port, duration, connections)
        edge = measured(edge_proc.pid, edge_port, duration, connections)
        plain = measured(plain_proc.pid, plain_port, duration, connections)
    print(f"direct: {direct[0]:.0f} rps p50 {direct[1]:.2f} ms p99 {direct[2]:.2f} ms")
    print(f"nginx:  {nginx[0]:.0f} rps p50 {nginx[1]:.2f} ms p99 {nginx[2]:.2f} ms, {nginx[3]:.1f} us CPU/request, "
          f"RSS {nginx[4]:.1f} MiB")
    print(f"edge:   {edge[0]:.0f} rps p50 {edge[1]:.2f} ms p99 {edge[2]:.2f} ms, {edge[3]:.1f} us CPU/request, "
          f"RSS {edge[4]:.1f} MiB")
    print(f"edge without the lane (--no-lane): {plain[0]:.0f} rps p50 {plain[1]:.2f} ms p99 {plain[2]:.2f} ms, "
          f"{plain[3]:.1f} us CPU/request")
    print(
        f"edge_rps={edge[0]:.0f} nginx_rps={nginx[0]:.0f} ratio={edge[0] / nginx[0]:.2f} "
        f"no_lane_ratio={plain[0] / nginx[0]:.2f} no_lane_added_p50_ms={plain[1] - direct[1]:.2f} "
        f"no_lane_added_p99_ms={plain[2] - direct[2]:.2f} c_ext={int(ACCELERATED)} "
        f"edge_added_p50_ms={edge[1] - direct[1]:.2f} edge_added_p99_ms={edge[2] - direct[2]:.2f} "
        f"nginx_added_p50_ms={nginx[1] - direct[1]:.2f} nginx_added_p99_ms={nginx[2] - direct[2]:.2f} "
        f"edge_cpu_us_per_req={edge[3]:.1f} nginx_cpu_us_per_req={nginx[3]:.1f} "
        f"cpu_ratio={nginx[3] / edge[3]:.2f} edge_rss_mib={edge[4]:.1f} nginx_rss_mib={nginx[4]:.1f} "
        f"connections={connections} duration_s={duration} browser_fields={int(bool(EXTRA_HEADERS))}"
    )


if __name__ == "__main__":
    main()
