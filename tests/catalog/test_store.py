"""The catalog contract in one process, for the embedded and the replicated catalog alike: versioned writes,
snapshots, and bad writes that change nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from catalog import Catalog, CatalogError, Conflict, InvalidWrite, NotFound, State, addressing
from catalog.errors import ConfigError
from tests.catalog.conftest import MakeCatalog


@pytest.fixture
def cat(tmp_path: Path, make_catalog: MakeCatalog) -> Iterator[Catalog]:
    catalog = make_catalog(tmp_path / "state")
    catalog.create_org("acme")
    catalog.create_org("globex")
    catalog.register_host("worker-gru", "gru", "worker", "198.51.100.2")
    catalog.register_host("gw-gru", "gru", "gateway", "198.51.100.3")
    catalog.register_host("edge-gru", "gru", "edge", "198.51.100.4")
    catalog.create_app("web", "acme", config={"http_service": {"internal_port": 8080}})
    yield catalog
    catalog.close()


def test_every_write_gets_the_next_version(cat: Catalog) -> None:
    before = cat.version()
    machine = cat.create_machine("web", "worker-gru", state="started")
    assert cat.version() == before + 1
    cat.set_machine_state(machine.id, "stopped")
    changes = cat.changes_since(before)
    assert [c.version for c in changes] == [before + 1, before + 2]
    assert [c.op for c in changes] == ["put", "put"]
    assert changes[-1].record == cat.machine(machine.id)


def test_written_is_the_position_of_the_handles_own_last_write(cat: Catalog, tmp_path: Path,
                                                              make_catalog: MakeCatalog) -> None:
    cat.create_org("initech")
    mine = cat.written
    assert mine == cat.position()
    other = make_catalog(tmp_path / "state")
    try:
        other.create_org("umbrella")
        assert other.written > mine and cat.written == mine  # another handle's write is not ours
    finally:
        other.close()
    cat.set_host_key("gw-gru", "k" * 43 + "=")
    assert cat.host("gw-gru").mesh_applied == 0 and cat.written > mine


def test_snapshot_plus_changes_equals_later_snapshot(cat: Catalog) -> None:
    early = cat.snapshot()
    m1 = cat.create_machine("web", "worker-gru", state="started")
    m2 = cat.create_machine("web", "worker-gru")
    cat.delete_machine(m1.id)
    for change in cat.changes_since(early.version):
        early.apply(change)
    late = cat.snapshot()
    assert early == late
    assert list(late.machines) == [m2.id]


def test_apply_ignores_changes_already_seen(cat: Catalog) -> None:
    state = cat.snapshot()
    cat.create_machine("web", "worker-gru")
    changes = cat.changes_since(state.version)
    for change in changes + changes:
        state.apply(change)
    assert len(state.machines) == 1


def test_machine_address_lives_in_its_network_and_host(cat: Catalog) -> None:
    machine = cat.create_machine("web", "worker-gru")
    net = cat.network("acme")
    host = cat.host("worker-gru")
    fields = addressing.parse(machine.address)
    assert (fields.network_id, fields.host_id, fields.low) == (net.net_id, host.host_id, 2)


def test_named_network_gets_its_own_never_reused_id(cat: Catalog) -> None:
    app = cat.create_app("db", "acme", network="acme-db")
    ids = {n.net_id for n in cat.snapshot().networks.values()}
    assert app.network == "acme-db"
    assert len(ids) == 3


def test_peer_address_is_a_slash120_of_the_gateway(cat: Catalog) -> None:
    peer = cat.create_peer("acme", "alice", "gw-gru", "A" * 43 + "=")
    fields = addressing.parse(peer.address)
    assert fields.host_id == cat.host("gw-gru").host_id
    assert peer.prefix.prefixlen == 120


def _refused(cat: Catalog, write: Callable[[], object], error: type[CatalogError]) -> None:
    before = cat.snapshot()
    with pytest.raises(error):
        write()
    assert cat.snapshot() == before
    assert cat.version() == before.version


@pytest.mark.parametrize(
    ("write", "error"),
    [
        (lambda c: c.create_machine("nope", "worker-gru"), NotFound),
        (lambda c: c.create_machine("web", "no-such-host"), NotFound),
        (lambda c: c.create_machine("web", "edge-gru"), InvalidWrite),
        (lambda c: c.create_machine("web", "worker-gru", machine_id="XYZ"), InvalidWrite),
        (lambda c: c.create_machine("web", "worker-gru", state="zombie"), InvalidWrite),
        (lambda c: c.create_app("web", "acme"), Conflict),
        (lambda c: c.create_app("x", "nobody"), NotFound),
        (lambda c: c.create_app("x", "globex", network="acme"), Conflict),
        (lambda c: c.create_app("Bad_Name", "acme"), InvalidWrite),
        (lambda c: c.create_app("x", "acme", config={"http_service": {"internal_port": 0}}), ConfigError),
        (lambda c: c.create_app("x", "acme", config={"bogus": 1}), ConfigError),
        (lambda c: c.create_app("x", "acme", config={"primary_region": "mars"}), NotFound),
        (lambda c: c.create_org("acme"), Conflict),
        (lambda c: c.register_host("worker-gru", "gru", "worker", "198.51.100.9"), Conflict),
        (lambda c: c.register_host("h", "mars", "worker", "198.51.100.9"), NotFound),
        (lambda c: c.register_host("h", "gru", "router", "198.51.100.9"), InvalidWrite),
        (lambda c: c.create_peer("acme", "bob", "worker-gru", "k"), InvalidWrite),
        (lambda c: c.create_peer("acme", "bad name", "gw-gru", "k"), InvalidWrite),
        (lambda c: c.create_peer("acme", "bob", "gw-gru", "k", network="globex"), Conflict),
        (lambda c: c.delete_app("web2"), NotFound),
    ],
)
def test_bad_writes_are_refused_and_change_nothing(
    cat: Catalog, write: Callable[[Catalog], object], error: type[CatalogError]
) -> None:
    _refused(cat, lambda: write(cat), error)


def test_duplicate_machine_id_is_refused(cat: Catalog) -> None:
    machine = cat.create_machine("web", "worker-gru")
    _refused(cat, lambda: cat.create_machine("web", "worker-gru", machine_id=machine.id), Conflict)


def test_duplicate_peer_name_is_refused(cat: Catalog) -> None:
    cat.create_peer("acme", "alice", "gw-gru", "k")
    _refused(cat, lambda: cat.create_peer("acme", "alice", "gw-gru", "k"), Conflict)


def test_app_with_machines_cannot_be_deleted(cat: Catalog) -> None:
    cat.create_machine("web", "worker-gru")
    _refused(cat, lambda: cat.delete_app("web"), Conflict)


def test_move_gives_a_new_address_on_the_new_host(cat: Catalog) -> None:
    cat.register_host("worker-sjc", "sjc", "worker", "198.51.100.20")
    machine = cat.create_machine("web", "worker-gru", state="started")
    moved = cat.move_machine(machine.id, "worker-sjc")
    assert (moved.id, moved.region, moved.host) == (machine.id, "sjc", "worker-sjc")
    assert addressing.parse(moved.address).host_id == cat.host("worker-sjc").host_id
    assert moved.address != machine.address


def test_state_queries(cat: Catalog) -> None:
    started = cat.create_machine("web", "worker-gru", state="started")
    cat.create_machine("web", "worker-gru")
    state: State = cat.snapshot()
    assert [m.id for m in state.machines_of("web", started_only=True)] == [started.id]
    net = state.network_of_app("web")
    assert net is not None and state.network_by_id(net.net_id) == net
    assert [h.name for h in state.hosts_with_role("gateway")] == ["gw-gru"]


def test_app_config_round_trips_through_the_store(cat: Catalog, tmp_path: Path) -> None:
    other = Catalog(tmp_path / "state")
    service = other.app("web").config.http_service
    assert service is not None and service.internal_port == 8080
    other.close()
