"""What only the replicated catalog has to get right: racing writers across processes, replicas that agree
row for row, host-owned reports (local first, ordered, only by their host), bad stream messages, a corrupt
replica, and a cluster that cannot be reached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import pytest

from catalog import Catalog, CatalogError
from catalog.errors import ClusterUnavailable, Conflict
from catalog.fleetconfig import render_host_config
from catalog.replica import GLOBAL_SUBJECT, host_subject
from catalog.replicated import ReplicatedCatalog
from catalog.replicator import open_replica
from tests.catalog.conftest import host_config
from tests.natsserver import NatsServer, nats_server

ROOT = Path(__file__).resolve().parents[2]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def rows(state: Path) -> dict[tuple[str, str], str]:
    """Every row of a replica, to compare replicas row for row (not only their versions)."""
    with Catalog(state) as cat:
        return {(k, key): data for k, key, data in cat.db.execute("SELECT kind, key, data FROM records")}


@pytest.fixture
def world(tmp_path: Path, nats: NatsServer) -> Iterator[ReplicatedCatalog]:
    op = ReplicatedCatalog(host_config(nats, tmp_path / "op"))
    op.init_stream(1)
    op.create_org("acme")
    op.register_host("worker-gru", "gru", "worker", "198.51.100.2")
    op.register_host("worker-gig", "gig", "worker", "198.51.100.34")
    op.create_app("web", "acme")
    yield op
    op.close()


def _config_file(server: NatsServer, tmp_path: Path, name: str, role: str = "operator") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(render_host_config(host_config(server, tmp_path / name, name, role)))
    return path


def _sixpn(config: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "sixpn.cli", "--host-config", str(config), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


WRITER = """
import sys
from catalog.fleetconfig import load_host_config
from catalog.replicated import ReplicatedCatalog
from catalog.errors import Conflict
cat = ReplicatedCatalog(load_host_config(sys.argv[1]))
for i in range(int(sys.argv[2])):
    print(cat.create_machine("web", "worker-gru").address, flush=True)
try:
    cat.create_app("contested", "acme")
    print("won", flush=True)
except Conflict:
    print("lost", flush=True)
cat.close()
"""


def test_racing_writers_in_four_processes_never_both_win(
        world: ReplicatedCatalog, nats: NatsServer, tmp_path: Path) -> None:
    configs = [_config_file(nats, tmp_path, f"w{i}") for i in range(4)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(c), "40"], stdout=subprocess.PIPE, text=True,
                              env=env) for c in configs]
    outputs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    addresses = [a for out in outputs for a in out if a.startswith("fdaa:")]
    assert len(addresses) == 160 and len(set(addresses)) == 160  # every slot claimed once
    assert sorted(out[-1] for out in outputs) == ["lost", "lost", "lost", "won"]  # one name, one winner
    world.sync()
    for config in configs:
        with ReplicatedCatalog(host_config(nats, tmp_path / config.stem)) as replica:
            replica.sync()
    reference = rows(tmp_path / "op")
    assert len([k for k in reference if k[0] == "machine"]) == 160
    for config in configs:
        assert rows(tmp_path / config.stem) == reference  # row for row, not only the same version


def test_host_reports_are_local_first_ordered_and_only_by_their_host(
        world: ReplicatedCatalog, nats: NatsServer, tmp_path: Path) -> None:
    machine = world.create_machine("web", "worker-gru")
    other_id = world.create_machine("web", "worker-gig").id
    worker = ReplicatedCatalog(host_config(nats, tmp_path / "worker-gru", "worker-gru", "worker"))
    worker.sync()
    nats.stop()  # the cluster is gone: the host's own report still lands on the host at once
    reported = worker.observe_machine(machine.id, "worker-gru", state="started", restarts=0)
    assert Catalog(tmp_path / "worker-gru").machine(machine.id).state == "started"
    assert worker.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 1
    with pytest.raises(CatalogError, match="worker-gru's replica: it cannot report for host worker-gig"):
        worker.observe_machine(machine.id, "worker-gig", state="stopped")
    elsewhere = next(m for m in Catalog(tmp_path / "worker-gru").snapshot().machines.values() if m.id == other_id)
    with pytest.raises(Conflict, match="runs on worker-gig, not worker-gru"):
        worker.observe_machine(elsewhere.id, "worker-gru", state="started")
    assert reported.obs_gen > machine.obs_gen
    worker.close()


def test_a_stale_report_never_overwrites_a_newer_one(world: ReplicatedCatalog, nats: NatsServer,
                                                     tmp_path: Path) -> None:
    machine = world.create_machine("web", "worker-gru")
    worker = ReplicatedCatalog(host_config(nats, tmp_path / "worker-gru", "worker-gru", "worker"))
    worker.sync()
    first = worker.observe_machine(machine.id, "worker-gru", state="started")
    second = worker.observe_machine(machine.id, "worker-gru", state="stopped", exit_code=137)
    bodies = [row[0] for row in worker.db.execute("SELECT body FROM outbox ORDER BY id")]
    # The newer report is published first, the older one after it (a retry, a reordering): it must lose.
    for body in reversed(bodies):
        worker.link.publish(host_subject("worker-gru"), body.encode())
    # A global write carrying the stale observed fields must not roll them back either.
    world.sync()
    world.set_machine_metadata(machine.id, {"role": "primary"})
    for replica in (world, worker):
        replica.sync()
        seen = Catalog(replica.state_dir).machine(machine.id)
        assert (seen.state, seen.exit_code, seen.obs_gen) == ("stopped", 137, second.obs_gen)
        assert seen.metadata == {"role": "primary"}
    assert first.obs_gen < second.obs_gen
    worker.close()



def test_a_hosts_mesh_report_travels_forward_only_and_survives_global_writes(
        world: ReplicatedCatalog, nats: NatsServer, tmp_path: Path) -> None:
    """`mesh_applied` is what `sixpn wg create` waits on from any host: the host's own report, in the stream."""
    gateway = ReplicatedCatalog(host_config(nats, tmp_path / "worker-gru", "worker-gru", "worker"))
    gateway.sync()
    position = gateway.position()
    assert gateway.observe_host("worker-gru", position).mesh_applied == position
    assert Catalog(tmp_path / "worker-gru").host("worker-gru").mesh_applied == position  # local first
    assert gateway.observe_host("worker-gru", position - 1).mesh_applied == position  # never backwards
    with pytest.raises(CatalogError, match="cannot report for host worker-gig"):
        gateway.observe_host("worker-gig", position)
    bodies = [row[0] for row in gateway.db.execute("SELECT body FROM outbox ORDER BY id")]
    assert len(bodies) == 1
    stale = json.dumps({"v": 1, "host": {"mesh_applied": 1}}).encode()
    for body in (bodies[0].encode(), stale):  # the report, then an older one (a retry, a reordering)
        gateway.link.publish(host_subject("worker-gru"), body)
    world.set_host_key("worker-gru", "k" * 43 + "=")  # a global write carries the writer's older mesh_applied
    assert world.written > position
    for replica in (world, gateway):
        replica.sync()
        host = Catalog(replica.state_dir).host("worker-gru")
        assert (host.mesh_applied, host.public_key) == (position, "k" * 43 + "=")
    assert rows(tmp_path / "worker-gru") == rows(tmp_path / "op")
    gateway.close()


async def _publish_raw(url: str, subject: str, data: bytes) -> None:
    nc = await nats.connect(url)
    await nc.jetstream().publish(subject, data)
    await nc.close()


def test_malformed_and_foreign_messages_are_skipped_everywhere_alike(
        world: ReplicatedCatalog, nats: NatsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    bad = [
        (GLOBAL_SUBJECT, b"\xff not json"),
        (GLOBAL_SUBJECT, json.dumps({"v": 99, "ops": []}).encode()),
        (GLOBAL_SUBJECT, json.dumps({"v": 1, "ops": [["put", "org", {"name": "x", "evil": 1}]]}).encode()),
        (GLOBAL_SUBJECT, json.dumps({"v": 1, "ops": [["put", "org", {"name": "ok", "network": "ok"}],
                                                     ["drop", "table"]]}).encode()),  # all or nothing
        (host_subject("worker-gru"), json.dumps({"v": 1, "machine": "00", "observed": {"state": "x"}}).encode()),
        (host_subject("worker-gru"), json.dumps({"v": 1, "host": {"mesh_applied": "9"}}).encode()),
        (host_subject("worker-gru"), json.dumps({"v": 1, "host": {"mesh_applied": 9, "public_key": "x"}}).encode()),
        ("sixpn.cat.other", b"{}"),
    ]
    for subject, data in bad:
        asyncio.run(_publish_raw(nats.url, subject, data))
    world.create_org("globex")  # a good write after the bad ones still applies
    fresh = ReplicatedCatalog(host_config(nats, tmp_path / "fresh"))
    fresh.sync()
    assert "skipped stream message" in caplog.text
    for replica in (world, fresh):
        replica.sync()
        state = Catalog(replica.state_dir).snapshot()
        assert sorted(state.orgs) == ["acme", "globex"]
    assert rows(tmp_path / "fresh") == rows(tmp_path / "op")
    fresh.close()


def test_a_corrupt_replica_is_moved_aside_and_rebuilt_from_the_stream(
        world: ReplicatedCatalog, nats: NatsServer, tmp_path: Path) -> None:
    world.create_machine("web", "worker-gig")
    worker = tmp_path / "worker-gig"
    with ReplicatedCatalog(host_config(nats, worker, "worker-gig", "worker")) as replica:
        replica.sync()
    before = rows(worker)
    db = worker / "catalog.db"
    db.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    for suffix in ("-wal", "-shm"):
        (worker / f"catalog.db{suffix}").unlink(missing_ok=True)
    open_replica(worker).close()
    assert list(worker.glob("catalog.db.corrupt-*"))
    with ReplicatedCatalog(host_config(nats, worker, "worker-gig", "worker")) as replica:
        replica.sync()
    assert rows(worker) == before


def test_replicator_follows_the_stream_and_publishes_the_outbox(
        world: ReplicatedCatalog, nats: NatsServer, tmp_path: Path) -> None:
    config = _config_file(nats, tmp_path, "worker-gru", "worker")
    replicator = _sixpn(config, "catalog", "replicate")
    try:
        machine = world.create_machine("web", "worker-gru")
        local = Catalog(tmp_path / "worker-gru")
        wait_for(lambda: machine.id in local.snapshot().machines, what="the machine on the worker's replica")
        with ReplicatedCatalog(host_config(nats, tmp_path / "worker-gru", "worker-gru", "worker")) as agent:
            agent.observe_machine(machine.id, "worker-gru", state="started")

        def operator_sees_started() -> bool:
            world.sync()
            return world.machine(machine.id).state == "started"

        wait_for(operator_sees_started, what="the worker's report at the operator")
        wait_for(lambda: local.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0, what="empty outbox")
        assert rows(tmp_path / "worker-gru") == rows(tmp_path / "op")
    finally:
        replicator.terminate()
        _, err = replicator.communicate(timeout=10)
    assert replicator.returncode == 0, err
    assert "Traceback" not in err


def test_unreachable_cluster_is_one_clear_line_fast_and_writes_nothing(tmp_path: Path) -> None:
    with nats_server(tmp_path / "gone") as server:
        config = _config_file(server, tmp_path, "op")
        assert _sixpn(config, "catalog", "init", "--replicas", "1").communicate(timeout=30)
    started = time.monotonic()
    proc = _sixpn(config, "orgs", "create", "acme")
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - started < 8
    assert proc.returncode == 1
    assert err.startswith("sixpn: cannot reach the catalog's NATS cluster") and err.count("\n") == 1, err
    assert "Traceback" not in err
    with Catalog(tmp_path / "op") as cat:
        assert cat.snapshot().orgs == {}


def test_global_write_without_the_cluster_raises_and_changes_nothing(
        world: ReplicatedCatalog, nats: NatsServer) -> None:
    before = world.snapshot()
    nats.stop()
    with pytest.raises(ClusterUnavailable):
        world.create_org("globex")
    assert Catalog(world.state_dir).snapshot().orgs.keys() == before.orgs.keys()
