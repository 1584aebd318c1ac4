"""Fuzz the running server (a `sixpn dns serve` process) with random and mutated packets over UDP and TCP.

It must keep answering valid queries throughout and afterwards, and its resident memory may grow by at most
RSS_BOUND_MB: the reply caches are capped (20,000 entries each, per-packet keys only for queries of
≤ 512 bytes), so the growth is bounded whatever arrives.
"""

from __future__ import annotations

import random
import re
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rdatatype
import pytest

from dns6pn import Engine
from tests.dns6pn.world import World

UDP_PACKETS = 100_000
TCP_MESSAGES = 20_000
SYNC_EVERY = 500
RSS_BOUND_MB = 64
SEED = 6_0_6


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def server(world: World, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    log = tmp_path / "dns.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sixpn.cli", "--state", str(world.catalog.state_dir), "dns", "serve",
             "--listen", "127.0.0.1:0", "--source-override", world.acme_source, "--log-level", "info"],
            stdout=out, stderr=out,
        )
    try:
        deadline = time.monotonic() + 20
        port = None
        while port is None:
            match = re.search(r"serving \[127\.0\.0\.1\]:(\d+)", log.read_text())
            if match:
                port = int(match.group(1))
            elif proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start: {log.read_text()}")
            else:
                time.sleep(0.05)
        yield proc, port, log
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def corpus(world: World) -> list[bytes]:
    names = ["web.internal", "gru.web.internal", "vms.web.internal", "_apps.internal", "_instances.internal",
             f"{world.web_gru.id}.vm.web.internal", "top2.nearest.of.web.internal", "alice._peer.internal",
             "primary.role.kv._metadata.web.internal", "internal", "example.com", "nope.internal"]
    out = []
    for name in names:
        for rdtype in ("AAAA", "TXT", "A", "ANY", "SOA"):
            out.append(dns.message.make_query(name, rdtype).to_wire())
            out.append(dns.message.make_query(name, rdtype, use_edns=0, payload=1232, want_dnssec=True).to_wire())
    return out


def mutate(rng: random.Random, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(rng.randint(1, 6)):
        choice = rng.randrange(6)
        if choice == 0 and data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif choice == 1 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice == 2:
            del data[rng.randrange(len(data) + 1):]
        elif choice == 3:
            data += rng.randbytes(rng.randint(1, 40))
        elif choice == 4 and len(data) >= 12:
            data[4:12] = struct.pack("!HHHH", *(rng.choice((0, 1, 2, 0xFFFF)) for _ in range(4)))
        elif len(data) >= 4:
            data[2] = rng.randrange(256)  # opcode, QR, flags
    return bytes(data)


def packets(rng: random.Random, seeds: list[bytes], count: int) -> Iterator[bytes]:
    for _ in range(count):
        if rng.random() < 0.3:
            yield rng.randbytes(rng.choice((rng.randint(0, 16), rng.randint(12, 600))))
        else:
            yield mutate(rng, rng.choice(seeds))


def valid_answer(sock: socket.socket, port: int, qid: int) -> int:
    """Send a valid query and read the replies to fuzz packets until its own arrives; how many came."""
    query = dns.message.make_query("web.internal", "AAAA", id=qid)
    sock.sendto(query.to_wire(), ("127.0.0.1", port))
    seen = 0
    while True:
        data = sock.recv(65535)
        seen += 1
        wire = query.to_wire()
        if data[:2] != struct.pack("!H", qid) or data[12 : len(wire)] != wire[12:]:
            continue  # a reply to a fuzz packet (which may even carry the same ID)
        reply = dns.message.from_wire(data)
        assert reply.answer and reply.answer[0].rdtype == dns.rdatatype.AAAA, reply
        return seen - 1


def test_fuzz_udp_and_tcp(world: World, server: tuple[subprocess.Popen[bytes], int, Path]) -> None:
    proc, port, log = server
    rng = random.Random(SEED)
    seeds = corpus(world)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        sock.settimeout(10)
        for i in range(2000):  # warm up: every cache path once, then measure
            sock.sendto(seeds[i % len(seeds)], ("127.0.0.1", port))
            if i % 100 == 99:
                valid_answer(sock, port, i)
        before = rss_kb(proc.pid)
        # The pure core, fed the same packets, says which deserve a reply: the server must send every one
        # (none lost to a full buffer, none crashed on).
        oracle = Engine(world.catalog.snapshot(), source_override=world.acme_source)
        sent = expected = received = 0
        for packet in packets(rng, seeds, UDP_PACKETS):
            sock.sendto(packet, ("127.0.0.1", port))
            sent += 1
            expected += isinstance(oracle.handle(packet, "127.0.0.1", False), bytes)
            if sent % SYNC_EVERY == 0:
                received += valid_answer(sock, port, sent & 0xFFFF)
        assert sent == UDP_PACKETS
        assert received == expected, (received, expected)
    tcp_sent = fuzz_tcp(rng, seeds, port)
    assert tcp_sent >= TCP_MESSAGES
    assert proc.poll() is None, "server died"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        valid_answer(sock, port, 4242)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        wire = dns.message.make_query("vms.web.internal", "TXT").to_wire()
        conn.sendall(struct.pack("!H", len(wire)) + wire)
        size = struct.unpack("!H", recv_exact(conn, 2))[0]
        assert dns.message.from_wire(recv_exact(conn, size)).answer
    grown_mb = (rss_kb(proc.pid) - before) / 1024
    print(f"fuzz: {UDP_PACKETS} udp ({expected} answered) + {tcp_sent} tcp messages, rss grew {grown_mb:.1f} MB")
    assert grown_mb <= RSS_BOUND_MB
    assert "Traceback" not in log.read_text(), "a packet reached a handler fault (SERVFAIL path)"


def fuzz_tcp(rng: random.Random, seeds: list[bytes], port: int) -> int:
    sent = 0
    per_connection = 500
    while sent < TCP_MESSAGES:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            batch = [m[:65535] for m in packets(rng, seeds, per_connection)]
            stream = b"".join(struct.pack("!H", len(m)) + m for m in batch)
            if rng.random() < 0.2:
                stream += rng.randbytes(rng.randint(1, 100))  # a torn or bogus trailing frame
            conn.sendall(stream)
            sent += len(batch)
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):
                pass  # read replies until the server closes (idle timeout) or our half-close is seen
    return sent


def recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        assert chunk, "closed"
        data += chunk
    return data
