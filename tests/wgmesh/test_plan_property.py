"""Property: applying the plan to what is observed gives what is desired, and re-planning then plans nothing."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from wgmesh.desired import Desired, PeerSpec
from wgmesh.dump import ObservedPeer, ObservedWg
from wgmesh.plan import (
    AddAddress,
    AddRoute,
    DelAddress,
    DelRoute,
    ObservedNet,
    Op,
    RemovePeer,
    SetListenPort,
    SetPeer,
    SetPrivateKey,
    plan,
)

KEYS = [f"K{i}=" for i in range(6)]
nets = st.frozensets(st.sampled_from([ipaddress.IPv6Network(f"fdaa:0:{i}::/80") for i in range(5)]), max_size=3)
ifaces = st.frozensets(st.sampled_from([ipaddress.IPv6Interface(f"fdaa:0:{i}::3/128") for i in range(4)]), max_size=3)
endpoints = st.sampled_from([None, "192.0.2.1:51820", "192.0.2.2:51820"])
specs = st.builds(PeerSpec, st.just(""), nets, endpoints, st.sampled_from([0, 25]))


@st.composite
def desired(draw: st.DrawFn) -> Desired:
    keys = draw(st.frozensets(st.sampled_from(KEYS)))
    peers = {k: PeerSpec(k, s.allowed_ips, s.endpoint, s.keepalive) for k in keys for s in [draw(specs)]}
    routes = frozenset(n for s in peers.values() for n in s.allowed_ips if isinstance(n, ipaddress.IPv6Network))
    return Desired("h", draw(st.sampled_from(["ME=", "OTHER="])), draw(st.sampled_from([51820, 40000])), peers,
                   draw(ifaces), draw(ifaces), routes)


@st.composite
def observed(draw: st.DrawFn) -> tuple[ObservedWg, ObservedNet]:
    keys = draw(st.frozensets(st.sampled_from(KEYS)))
    peers = {k: ObservedPeer(k, draw(endpoints), draw(nets), draw(st.sampled_from([0, 25]))) for k in keys}
    wg = ObservedWg(draw(st.sampled_from(["", "ME="])), draw(st.sampled_from([51820, 1234])), peers)
    return wg, ObservedNet(draw(ifaces), draw(ifaces), draw(nets))


def simulate(wg: ObservedWg, net: ObservedNet, ops: list[Op]) -> tuple[ObservedWg, ObservedNet]:
    """What the kernel and wg would hold after the ops (a laptop's endpoint stays what it was)."""
    key, port, peers = wg.public_key, wg.listen_port, dict(wg.peers)
    wga, loa, routes = set(net.wg_addresses), set(net.lo_addresses), set(net.routes)
    for op in ops:
        if isinstance(op, SetPrivateKey):
            key = op.public_key
        elif isinstance(op, SetListenPort):
            port = op.port
        elif isinstance(op, SetPeer):
            old = peers.get(op.spec.public_key)
            endpoint = op.spec.endpoint if op.spec.endpoint is not None else (old.endpoint if old else None)
            peers[op.spec.public_key] = ObservedPeer(op.spec.public_key, endpoint, op.spec.allowed_ips,
                                                     op.spec.keepalive)
        elif isinstance(op, RemovePeer):
            del peers[op.public_key]
        elif isinstance(op, AddAddress | DelAddress):
            target = wga if op.device == "wg" else loa
            (target.add if isinstance(op, AddAddress) else target.discard)(op.address)
        elif isinstance(op, AddRoute):
            routes.add(op.prefix)
        elif isinstance(op, DelRoute):
            routes.discard(op.prefix)
    return ObservedWg(key, port, peers), ObservedNet(frozenset(wga), frozenset(loa), frozenset(routes))


@settings(max_examples=150, deadline=None)
@given(desired(), observed())
def test_plan_converges_in_one_step(want: Desired, seen: tuple[ObservedWg, ObservedNet]) -> None:
    wg, net = seen
    ops = plan(want, wg, net)
    wg2, net2 = simulate(wg, net, ops)
    assert set(wg2.peers) == set(want.peers)
    assert all(wg2.peers[k].allowed_ips == s.allowed_ips for k, s in want.peers.items())
    assert (net2.wg_addresses, net2.lo_addresses, net2.routes) == (want.wg_addresses, want.lo_addresses,
                                                                     want.routes)
    assert plan(want, wg2, net2) == []
    # Only peers that differ are touched.
    touched = {op.spec.public_key for op in ops if isinstance(op, SetPeer)}
    for key in touched & set(wg.peers):
        have, spec = wg.peers[key], want.peers[key]
        assert (have.allowed_ips, have.keepalive) != (spec.allowed_ips, spec.keepalive) or (
            spec.endpoint is not None and spec.endpoint != have.endpoint)
