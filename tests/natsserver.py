"""nats-server for tests: a JetStream server on a random loopback port, in a temporary directory, always
stopped (SIGKILL after a grace) when the test ends, even on failure."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

NATS_SERVER = Path(sys.executable).with_name("nats-server")


@dataclass
class NatsServer:
    proc: subprocess.Popen[bytes]
    url: str
    work: Path

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def nats_server(work: Path, extra: tuple[str, ...] = ()) -> Iterator[NatsServer]:
    work.mkdir(parents=True, exist_ok=True)
    ports = work / "ports"
    ports.mkdir(exist_ok=True)
    log = open(work / "nats.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([str(NATS_SERVER), "-js", "-sd", str(work / "js"), "-p", "-1", "-a", "127.0.0.1",
                             "--ports_file_dir", str(ports), *extra], stdout=log, stderr=log)
    log.close()
    server = NatsServer(proc, "", work)
    try:
        deadline = time.monotonic() + 10
        while not server.url:
            found = list(ports.glob("*.ports"))
            if found:
                with contextlib.suppress(ValueError):
                    server.url = json.loads(found[0].read_text())["nats"][0]
            if proc.poll() is not None:
                raise RuntimeError(f"nats-server exited: {(work / 'nats.log').read_text()[-500:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("nats-server did not start")
            time.sleep(0.01)
        yield server
    finally:
        server.stop()


def free_ports(count: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@dataclass
class NatsCluster:
    work: Path
    client_ports: list[int]
    route_ports: list[int]
    servers: list[NatsServer | None]

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(f"nats://127.0.0.1:{p}" for p in self.client_ports)

    def start(self, index: int) -> NatsServer:
        work = self.work / f"n{index}"
        work.mkdir(parents=True, exist_ok=True)
        routes = ",".join(f"nats://127.0.0.1:{p}" for i, p in enumerate(self.route_ports) if i != index)
        log = open(work / "nats.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [str(NATS_SERVER), "-js", "-sd", str(work / "js"), "-a", "127.0.0.1", "-p", str(self.client_ports[index]),
             "-n", f"n{index}", "--cluster_name", "sixpn", "--cluster", f"nats://127.0.0.1:{self.route_ports[index]}",
             "--routes", routes], stdout=log, stderr=log)
        log.close()
        server = NatsServer(proc, self.urls[index], work)
        self.servers[index] = server
        return server

    def kill(self, index: int) -> None:
        server = self.servers[index]
        if server is not None:
            server.stop(signal.SIGKILL)
            self.servers[index] = None

    def stop(self) -> None:
        for index in range(len(self.servers)):
            server = self.servers[index]
            if server is not None:
                server.stop()
                self.servers[index] = None


@contextlib.contextmanager
def nats_cluster(work: Path, size: int = 3) -> Iterator[NatsCluster]:
    """`size` servers clustered on loopback; ready once JetStream has a meta leader (a stream can be made)."""
    ports = free_ports(2 * size)
    cluster = NatsCluster(work, ports[:size], ports[size:], [None] * size)
    try:
        for index in range(size):
            cluster.start(index)
        _wait_meta_leader(cluster.urls)
        yield cluster
    finally:
        cluster.stop()


def _wait_meta_leader(urls: tuple[str, ...], timeout: float = 20.0) -> None:
    import asyncio

    import nats
    import nats.errors

    async def probe() -> bool:
        try:
            nc = await nats.connect(list(urls), connect_timeout=1, max_reconnect_attempts=1, error_cb=_ignore)
        except Exception:
            return False
        try:
            info = await nc.jetstream().account_info()
            return info is not None
        except Exception:
            return False
        finally:
            await nc.close()

    deadline = time.monotonic() + timeout
    while not asyncio.run(probe()):
        if time.monotonic() > deadline:
            raise RuntimeError("the NATS cluster has no JetStream meta leader")
        time.sleep(0.1)


async def _ignore(_exc: Exception) -> None:
    return None
