from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest

from catalog import addressing
from wgmesh import keys
from wgmesh.desired import compute
from wgmesh.dump import ObservedPeer, ObservedWg
from wgmesh.errors import MeshError
from wgmesh.plan import (
    AddAddress,
    AddRoute,
    DelAddress,
    DelRoute,
    ObservedNet,
    RemovePeer,
    SetListenPort,
    SetPeer,
    SetPrivateKey,
    plan,
)

from .world import World, make_world


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = make_world(tmp_path)
    yield w
    w.cat.close()


def observe_applied(world: World, host: str) -> tuple[ObservedWg, ObservedNet]:
    """What a host looks like after applying its desired state perfectly."""
    want = compute(world.cat.snapshot(), host, world.keys[host].public)
    peers = {
        k: ObservedPeer(k, s.endpoint, s.allowed_ips, s.keepalive, latest_handshake=1, rx_bytes=1, tx_bytes=1)
        for k, s in want.peers.items()
    }
    return (ObservedWg(want.public_key, want.listen_port, peers),
            ObservedNet(want.wg_addresses, want.lo_addresses, want.routes))


def test_every_other_keyed_host_is_a_peer_with_its_mesh_address(world: World) -> None:
    state = world.cat.snapshot()
    want = compute(state, "worker-gru", world.keys["worker-gru"].public)
    labels = sorted(s.label for s in want.peers.values())
    assert labels == ["edge-gru", "gw-gru", "gw-sjc", "worker-sjc"]
    sjc = want.peers[world.keys["worker-sjc"].public]
    assert sjc.allowed_ips == {ipaddress.IPv6Network(state.hosts["worker-sjc"].mesh_address)}
    assert sjc.endpoint == "192.0.2.2:51820"
    assert want.peers[world.keys["gw-sjc"].public].endpoint == "[2001:db8::5]:51820"
    assert want.wg_addresses == {ipaddress.IPv6Interface(f"{state.hosts['worker-gru'].mesh_address}/128")}


def test_peer_allows_exactly_the_networks_living_on_that_host(world: World) -> None:
    m = world.cat.create_machine("web", "worker-sjc")
    world.cat.create_machine("web", "worker-sjc")
    g = world.cat.create_machine("db", "worker-sjc")
    state = world.cat.snapshot()
    sjc = state.hosts["worker-sjc"]
    want = compute(state, "worker-gru", world.keys["worker-gru"].public)
    acme = addressing.network_id_of(m.address)
    globex = addressing.network_id_of(g.address)
    expected = {addressing.host_prefix(acme, sjc.host_id), addressing.host_prefix(globex, sjc.host_id),
                ipaddress.IPv6Network(sjc.mesh_address)}
    assert want.peers[sjc.public_key].allowed_ips == expected
    assert expected <= want.routes
    assert ipaddress.ip_address(m.address) in addressing.host_prefix(acme, sjc.host_id)


def test_unkeyed_host_is_skipped_and_unknown_host_refused(world: World) -> None:
    world.cat.register_host("worker-new", "gru", "worker", "192.0.2.9")
    want = compute(world.cat.snapshot(), "worker-gru", world.keys["worker-gru"].public)
    assert "worker-new" not in {s.label for s in want.peers.values()}
    with pytest.raises(MeshError):
        compute(world.cat.snapshot(), "nope", "x")


def test_gateway_has_laptop_peers_and_their_dns_addresses(world: World) -> None:
    laptop = keys.generate()
    peer = world.cat.create_peer("acme", "alice", "gw-gru", laptop.public)
    state = world.cat.snapshot()
    want = compute(state, "gw-gru", world.keys["gw-gru"].public)
    spec = want.peers[laptop.public]
    assert spec.allowed_ips == {peer.prefix} and spec.endpoint is None
    acme = state.networks["acme"]
    assert want.lo_addresses == {ipaddress.IPv6Interface(f"{acme.dns_address}/128")}
    # Other hosts route the laptop's /120 to the gateway: its /80 of acme is in the gateway's AllowedIPs.
    worker = compute(state, "worker-gru", world.keys["worker-gru"].public)
    gw_nets = worker.peers[world.keys["gw-gru"].public].allowed_ips
    assert any(ipaddress.ip_address(peer.address) in n for n in gw_nets if n.prefixlen == 80)
    # A laptop is never a peer of a worker.
    assert laptop.public not in worker.peers


def test_perfectly_applied_state_plans_nothing(world: World) -> None:
    world.cat.create_machine("web", "worker-sjc")
    world.cat.create_peer("acme", "alice", "gw-gru", keys.generate().public)
    for host in ("worker-gru", "gw-gru", "edge-gru"):
        wg, net = observe_applied(world, host)
        want = compute(world.cat.snapshot(), host, world.keys[host].public)
        assert plan(want, wg, net) == []


def test_placing_a_machine_touches_only_that_hosts_peer(world: World) -> None:
    wg, net = observe_applied(world, "worker-gru")
    world.cat.create_machine("web", "worker-sjc")
    want = compute(world.cat.snapshot(), "worker-gru", world.keys["worker-gru"].public)
    ops = plan(want, wg, net)
    sets = [op for op in ops if isinstance(op, SetPeer)]
    assert [op.spec.label for op in sets] == ["worker-sjc"] and not sets[0].new
    assert [type(op) for op in ops] == [SetPeer, AddRoute]
    # The route goes in after the peer that carries it.
    assert ops.index(sets[0]) < next(i for i, op in enumerate(ops) if isinstance(op, AddRoute))


def test_removing_a_machine_removes_route_before_narrowing_peer(world: World) -> None:
    m = world.cat.create_machine("web", "worker-sjc")
    wg, net = observe_applied(world, "worker-gru")
    world.cat.delete_machine(m.id)
    ops = plan(compute(world.cat.snapshot(), "worker-gru", world.keys["worker-gru"].public), wg, net)
    assert [type(op) for op in ops] == [SetPeer, DelRoute]


def test_removed_host_and_rekeyed_laptop(world: World) -> None:
    laptop = keys.generate()
    world.cat.create_peer("acme", "alice", "gw-gru", laptop.public)
    wg, net = observe_applied(world, "gw-gru")
    fresh = keys.generate()
    world.cat.set_peer_key("alice", fresh.public)
    world.cat.delete_host("edge-gru")
    ops = plan(compute(world.cat.snapshot(), "gw-gru", world.keys["gw-gru"].public), wg, net)
    removed = {op.public_key for op in ops if isinstance(op, RemovePeer)}
    assert removed == {laptop.public, world.keys["edge-gru"].public}
    added = [op for op in ops if isinstance(op, SetPeer)]
    assert [(op.spec.public_key, op.new) for op in added] == [(fresh.public, True)]
    assert any(isinstance(op, DelRoute) for op in ops)
    assert isinstance(ops[-1], RemovePeer)


def test_fresh_interface_gets_key_port_addresses(world: World) -> None:
    want = compute(world.cat.snapshot(), "edge-gru", world.keys["edge-gru"].public)
    ops = plan(want, ObservedWg("", 41234, {}), ObservedNet())
    assert isinstance(ops[0], AddAddress)
    assert SetPrivateKey(world.keys["edge-gru"].public) in ops
    assert SetListenPort(51820) in ops
    assert sum(isinstance(op, SetPeer) for op in ops) == 4


def test_stray_addresses_and_changed_endpoint(world: World) -> None:
    wg, net = observe_applied(world, "worker-gru")
    stray = ipaddress.IPv6Interface("fdaa:0:7::3/128")
    key = world.keys["worker-sjc"].public
    moved = {**wg.peers, key: ObservedPeer(key, "198.51.100.7:51820", wg.peers[key].allowed_ips, 0)}
    ops = plan(compute(world.cat.snapshot(), "worker-gru", world.keys["worker-gru"].public),
               ObservedWg(wg.public_key, wg.listen_port, moved),
               ObservedNet(net.wg_addresses, net.lo_addresses | {stray}, net.routes))
    assert DelAddress("lo", stray) in ops
    assert [op.spec.label for op in ops if isinstance(op, SetPeer)] == ["worker-sjc"]


def test_roaming_laptop_endpoint_is_not_a_change(world: World) -> None:
    laptop = keys.generate()
    world.cat.create_peer("acme", "alice", "gw-gru", laptop.public)
    wg, net = observe_applied(world, "gw-gru")
    peer = wg.peers[laptop.public]
    roamed = {**wg.peers, laptop.public: ObservedPeer(laptop.public, "203.0.113.9:40000", peer.allowed_ips, 0)}
    want = compute(world.cat.snapshot(), "gw-gru", world.keys["gw-gru"].public)
    assert plan(want, ObservedWg(wg.public_key, wg.listen_port, roamed), net) == []


def test_laptop_row_carrying_a_host_key_cannot_shadow_the_host(world: World) -> None:
    world.cat.create_peer("acme", "mallory", "gw-gru", world.keys["worker-gru"].public)
    want = compute(world.cat.snapshot(), "gw-gru", world.keys["gw-gru"].public)
    spec = want.peers[world.keys["worker-gru"].public]
    assert spec.label == "worker-gru" and spec.endpoint == "192.0.2.1:51820"
