"""The planner: `plan(desired, observed) -> ops`, pure. The applier runs the ops in the order given.

Only what differs becomes an op, one per peer (spec: never replace all peers, never tear the interface
down), so a session with an unchanged peer keeps its handshake, and an empty diff plans nothing.
Order: additions before the routes that point at them; route removals before the peers behind them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from wgmesh.desired import Desired, PeerSpec
from wgmesh.dump import ObservedPeer, ObservedWg


@dataclass(frozen=True)
class ObservedNet:
    """The kernel side, as far as wgmesh owns it (the agent filters out everything it does not manage)."""

    wg_addresses: frozenset[ipaddress.IPv6Interface] = frozenset()
    lo_addresses: frozenset[ipaddress.IPv6Interface] = frozenset()
    routes: frozenset[ipaddress.IPv6Network] = frozenset()


@dataclass(frozen=True)
class SetPrivateKey:
    """Load the host's key file into the interface (the op carries no secret, only the wish)."""

    public_key: str


@dataclass(frozen=True)
class SetListenPort:
    port: int


@dataclass(frozen=True)
class SetPeer:
    spec: PeerSpec
    new: bool


@dataclass(frozen=True)
class RemovePeer:
    public_key: str


@dataclass(frozen=True)
class AddAddress:
    device: str  # "wg" (the mesh interface) or "lo"
    address: ipaddress.IPv6Interface


@dataclass(frozen=True)
class DelAddress:
    device: str
    address: ipaddress.IPv6Interface


@dataclass(frozen=True)
class AddRoute:
    prefix: ipaddress.IPv6Network


@dataclass(frozen=True)
class DelRoute:
    prefix: ipaddress.IPv6Network


Op = SetPrivateKey | SetListenPort | SetPeer | RemovePeer | AddAddress | DelAddress | AddRoute | DelRoute
WgOp = SetPrivateKey | SetListenPort | SetPeer | RemovePeer


def peer_differs(want: PeerSpec, have: ObservedPeer) -> bool:
    if want.allowed_ips != have.allowed_ips or want.keepalive != have.keepalive:
        return True
    # A roaming peer's endpoint is whatever it last sent from; only pinned endpoints are compared.
    return want.endpoint is not None and want.endpoint != have.endpoint


def _sorted_nets(nets: frozenset[ipaddress.IPv6Network]) -> list[ipaddress.IPv6Network]:
    return sorted(nets, key=lambda n: (int(n.network_address), n.prefixlen))


def _sorted_ifaces(items: frozenset[ipaddress.IPv6Interface]) -> list[ipaddress.IPv6Interface]:
    return sorted(items, key=lambda i: (int(i.ip), i.network.prefixlen))


def plan_wg(desired: Desired, observed: ObservedWg) -> list[WgOp]:
    ops: list[WgOp] = []
    if observed.public_key != desired.public_key:
        ops.append(SetPrivateKey(desired.public_key))
    if observed.listen_port != desired.listen_port:
        ops.append(SetListenPort(desired.listen_port))
    for key in sorted(desired.peers):
        want, have = desired.peers[key], observed.peers.get(key)
        if have is None or peer_differs(want, have):
            ops.append(SetPeer(want, new=have is None))
    ops.extend(RemovePeer(key) for key in sorted(observed.peers) if key not in desired.peers)
    return ops


def plan(desired: Desired, observed_wg: ObservedWg, observed_net: ObservedNet) -> list[Op]:
    wg_ops = plan_wg(desired, observed_wg)
    adds: list[Op] = [op for op in wg_ops if not isinstance(op, RemovePeer)]
    removes: list[Op] = [op for op in wg_ops if isinstance(op, RemovePeer)]
    addr_add: list[Op] = [AddAddress("wg", a) for a in _sorted_ifaces(desired.wg_addresses - observed_net.wg_addresses)]
    addr_add += [AddAddress("lo", a) for a in _sorted_ifaces(desired.lo_addresses - observed_net.lo_addresses)]
    addr_del: list[Op] = [DelAddress("wg", a) for a in _sorted_ifaces(observed_net.wg_addresses - desired.wg_addresses)]
    addr_del += [DelAddress("lo", a) for a in _sorted_ifaces(observed_net.lo_addresses - desired.lo_addresses)]
    route_add: list[Op] = [AddRoute(n) for n in _sorted_nets(desired.routes - observed_net.routes)]
    route_del: list[Op] = [DelRoute(n) for n in _sorted_nets(observed_net.routes - desired.routes)]
    return [*addr_add, *adds, *route_add, *route_del, *removes, *addr_del]
