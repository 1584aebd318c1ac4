"""What one host's mesh should look like, computed from the catalog (pure: State in, Desired out).

Every other host with a published key is a peer whose AllowedIPs are exactly the 6PN space living on it
(spec 6pn-and-mesh.md "The host mesh"): the /80 `host_prefix(net, host)` of each network with a machine
there (or, on a gateway, a laptop peer), plus the host's own mesh address. On a gateway the laptop peers
attached to it are peers too, each allowed only its /120.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from catalog import State, addressing
from catalog.models import Host
from wgmesh.dump import Net
from wgmesh.errors import MeshError

WG_PORT = 51820
#: No persistent keepalive between hosts: with it, two hosts that add each other at the same moment (every
#: agent at `lab up`) both initiate at once, each initiation overwrites the other side's handshake state, both
#: responses are rejected, and the pair waits REKEY_TIMEOUT (5 s) to retry (whitepaper §6.1, §6.4). Handshakes
#: are driven by traffic instead, so one side initiates; the agent renews stale sessions itself after a restart.
HOST_KEEPALIVE = 0


@dataclass(frozen=True)
class PeerSpec:
    public_key: str
    allowed_ips: frozenset[Net]
    endpoint: str | None = None  # None: roaming (a laptop); we never pin it
    keepalive: int = 0
    label: str = ""  # host name or `peer/<name>`, for logs only


@dataclass(frozen=True)
class Desired:
    host: str
    public_key: str
    listen_port: int
    peers: Mapping[str, PeerSpec] = field(default_factory=dict)
    wg_addresses: frozenset[ipaddress.IPv6Interface] = frozenset()
    lo_addresses: frozenset[ipaddress.IPv6Interface] = frozenset()
    routes: frozenset[ipaddress.IPv6Network] = frozenset()


def endpoint_of(host: Host) -> str:
    """`ip:port`, IPv6 in brackets, the form `wg show dump` prints (so the two compare as strings)."""
    try:
        ip = ipaddress.ip_address(host.underlay)
    except ValueError as exc:
        raise MeshError(f"host {host.name}: underlay {host.underlay!r} is not an IP address") from exc
    return f"[{ip}]:{host.wg_port}" if ip.version == 6 else f"{ip}:{host.wg_port}"


def networks_by_host(state: State) -> dict[str, set[int]]:
    """Network ids with 6PN space on each host: its machines' and (on a gateway) its laptop peers'.
    One pass over the rows, so a reconcile costs O(hosts + machines), not their product."""
    ids: dict[str, set[int]] = {}
    rows: list[tuple[str, str]] = [(m.host, m.address) for m in state.machines.values()]
    rows += [(p.host, p.address) for p in state.peers.values()]
    for host, address in rows:
        ids.setdefault(host, set()).add(addressing.network_id_of(address))
    return ids


def host_allowed_ips(host: Host, networks: set[int]) -> frozenset[Net]:
    nets: set[Net] = {addressing.host_prefix(n, host.host_id) for n in networks}
    nets.add(ipaddress.IPv6Network(host.mesh_address))
    return frozenset(nets)


def gateway_dns_addresses(state: State, host: str) -> frozenset[ipaddress.IPv6Interface]:
    """`<network>::3/128` for each network with a laptop peer on this gateway (spec: DNS for peers)."""
    ids = {addressing.network_id_of(p.address) for p in state.peers.values() if p.host == host}
    return frozenset(ipaddress.IPv6Interface(f"{addressing.network_dns_address(n)}/128") for n in ids)


def compute(state: State, host: str, public_key: str, listen_port: int = WG_PORT) -> Desired:
    me = state.hosts.get(host)
    if me is None:
        raise MeshError(f"host {host!r} is not registered in the catalog")
    peers: dict[str, PeerSpec] = {}
    living = networks_by_host(state)
    for other in sorted(state.hosts.values(), key=lambda h: h.host_id):
        key = other.public_key
        if other.name == host or not key or key == public_key or key in peers:
            continue  # not yet keyed, or a duplicate key we must not let shadow a real peer
        allowed = host_allowed_ips(other, living.get(other.name, set()))
        peers[key] = PeerSpec(key, allowed, endpoint_of(other), HOST_KEEPALIVE, other.name)
    lo: frozenset[ipaddress.IPv6Interface] = frozenset()
    if me.role == "gateway":
        for peer in sorted(state.peers.values(), key=lambda p: p.name):
            if peer.host != host or not peer.public_key or peer.public_key in peers or peer.public_key == public_key:
                continue
            peers[peer.public_key] = PeerSpec(peer.public_key, frozenset({peer.prefix}), None, 0, f"peer/{peer.name}")
        lo = gateway_dns_addresses(state, host)
    routes = frozenset(
        net for spec in peers.values() for net in spec.allowed_ips if isinstance(net, ipaddress.IPv6Network)
    )
    return Desired(
        host=host,
        public_key=public_key,
        listen_port=listen_port if me.wg_port == WG_PORT else me.wg_port,
        peers=peers,
        wg_addresses=frozenset({ipaddress.IPv6Interface(f"{me.mesh_address}/128")}),
        lo_addresses=lo,
        routes=routes,
    )
