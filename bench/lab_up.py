"""Benchmark of the lab: `lab up` (and until its services serve) and `lab down` times for
examples/three-regions.toml; the delay line's throughput (one TCP stream, client-gru -> worker-gig, 8 ms RTT,
and gru -> sjc, 175 ms) and jitter (mdev of 100 pings gru -> sjc at 10 ms intervals).
Run as root: `python bench/lab_up.py`. Ends with one `key=value ...` line."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from netns_lab.lab import Lab

LAB_ID = "bn"
TOPOLOGY = Path(__file__).resolve().parent.parent / "examples" / "three-regions.toml"
PORT = 5201
SECONDS = 4.0

RECEIVER = f"""
import socket, time
s = socket.socket(socket.AF_INET); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {PORT})); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); total = 0; start = time.monotonic()
while True:
    data = c.recv(1 << 20)
    if not data: break
    total += len(data)
print(total, time.monotonic() - start, flush=True)
"""

SENDER = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], {port}))
buf = b"x" * (1 << 16); end = time.monotonic() + {seconds}
while time.monotonic() < end: c.sendall(buf)
c.close()
"""


def throughput(lab: Lab, src: str, dst: str) -> float:
    """Mbit/s of one TCP stream from node src to node dst, measured at the receiver."""
    receiver = subprocess.Popen(lab.exec_argv(dst, [sys.executable, "-c", RECEIVER]), stdout=subprocess.PIPE,
                                text=True)
    try:
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "ready"
        target = str(lab.plan.node(dst).v4)
        lab.exec(src, [sys.executable, "-c", SENDER.format(port=PORT, seconds=SECONDS), target], timeout=60)
        total, elapsed = receiver.stdout.readline().split()
        receiver.wait(30)
    finally:
        receiver.kill()
        receiver.wait()
    return int(total) * 8 / float(elapsed) / 1e6


def jitter(lab: Lab, src: str, dst: str) -> tuple[float, float]:
    out = lab.exec(src, ["ping", "-q", "-c", "100", "-i", "0.01", str(lab.plan.node(dst).v4)]).stdout
    match = re.search(r"= [\d.]+/([\d.]+)/[\d.]+/([\d.]+) ms", out)
    assert match, out
    return float(match.group(1)), float(match.group(2))


def main() -> int:
    start = time.monotonic()
    lab = Lab.up(TOPOLOGY, LAB_ID)
    up_s = time.monotonic() - start
    try:
        not_ready = lab.wait_ready()
        ready_s = time.monotonic() - start
        lab.exec("client-gru", ["ping", "-c", "1", str(lab.plan.node("worker-sjc").v4)])
        near = throughput(lab, "client-gru", "worker-gig")
        far = throughput(lab, "client-gru", "worker-sjc")
        local = throughput(lab, "client-gru", "worker-gru")
        avg, mdev = jitter(lab, "client-gru", "worker-sjc")
    finally:
        start = time.monotonic()
        Lab.down(LAB_ID)
        down_s = time.monotonic() - start
    late = f", not serving: {','.join(not_ready)}" if not_ready else ""
    print(f"lab up {up_s:.2f}s (services serving after {ready_s:.2f}s{late}), "
          f"down {down_s:.2f}s; one TCP stream through the delay line: gru->gig "
          f"{near:.0f} Mbit/s, gru->sjc {far:.0f} Mbit/s (bridged, no delay line: gru->gru {local:.0f} Mbit/s); "
          f"ping gru->sjc avg {avg:.2f} ms, mdev {mdev:.3f} ms (matrix 175)")
    print(f"up_s={up_s:.2f} ready_s={ready_s:.2f} down_s={down_s:.2f} delay_tcp_mbps_8ms={near:.0f} "
          f"delay_tcp_mbps_175ms={far:.0f} bridged_tcp_mbps={local:.0f} rtt_gru_sjc_ms={avg:.2f} "
          f"jitter_mdev_ms={mdev:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
