"""The replicated catalog on a three-server cluster (loopback): a server killed with SIGKILL in the middle
of 5,000 writes, replicators that reconnect, replicas identical row for row afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from catalog import Catalog
from catalog.errors import ClusterUnavailable, Conflict
from catalog.fleetconfig import CatalogConfig, HostConfig, render_host_config
from catalog.replicated import ReplicatedCatalog
from tests.catalog.test_replicated import ROOT, rows, wait_for
from tests.natsserver import NatsCluster, nats_cluster

WRITES = 5000


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with nats_cluster(tmp_path / "cluster") as made:
        yield made


def _config(cluster: NatsCluster, tmp_path: Path, name: str, role: str, first: int) -> HostConfig:
    urls = cluster.urls[first:] + cluster.urls[:first]  # its own "region" first
    return HostConfig(name, role, "gru", "", tmp_path / name, CatalogConfig("replicated", urls))


def _replicator(config: HostConfig, tmp_path: Path) -> subprocess.Popen[str]:
    path = tmp_path / f"{config.name}.toml"
    path.write_text(render_host_config(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "sixpn.cli", "--host-config", str(path), "catalog", "replicate"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def _write_all(op: ReplicatedCatalog, done: list[str]) -> None:
    """Create WRITES machines with known ids; a write whose outcome was unknown (the server died before the
    ack) is tried again, and 'already exists' then means it had landed: never applied twice."""
    for i in range(WRITES):
        machine_id = f"{i:014x}"
        for _ in range(200):
            try:
                op.create_machine("web", "worker-gru", machine_id=machine_id)
                break
            except Conflict:
                break
            except ClusterUnavailable:
                time.sleep(0.05)
        else:
            raise AssertionError(f"write {i} never got through")
        done.append(machine_id)


def test_server_killed_during_5000_writes_loses_nothing_and_replicas_agree(
        cluster: NatsCluster, tmp_path: Path) -> None:
    op = ReplicatedCatalog(_config(cluster, tmp_path, "op", "operator", 0))
    op.init_stream(3)
    op.create_org("acme")
    op.register_host("worker-gru", "gru", "worker", "198.51.100.2")
    op.create_app("web", "acme")
    hosts = [_config(cluster, tmp_path, f"host{i}", "worker", i) for i in range(3)]
    replicators = [_replicator(h, tmp_path) for h in hosts]
    done: list[str] = []
    writer = threading.Thread(target=_write_all, args=(op, done))
    try:
        writer.start()
        wait_for(lambda: len(done) >= WRITES // 3, timeout=120, what="a third of the writes")
        cluster.kill(0)  # the server the writer and host0 talk to first
        killed_at = len(done)
        wait_for(lambda: len(done) >= killed_at + 500, timeout=120, what="writes to continue on the quorum")
        cluster.start(0)
        writer.join(timeout=300)
        assert not writer.is_alive()
        assert len(done) == WRITES
        last = op.sync()
        for host in hosts:
            wait_for(lambda h=host: Catalog(h.state_dir).db.execute(  # type: ignore[misc]
                "SELECT value FROM meta WHERE key='seq'").fetchone()[0] == last, timeout=60,
                what=f"{host.name} to catch up")
        reference = rows(tmp_path / "op")
        assert sum(1 for kind, _ in reference if kind == "machine") == WRITES
        for host in hosts:
            assert rows(host.state_dir) == reference
    finally:
        for proc in replicators:
            proc.send_signal(signal.SIGTERM)
        for proc in replicators:
            _, err = proc.communicate(timeout=15)
            assert "Traceback" not in err, err
        op.close()
