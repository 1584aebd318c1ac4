"""Laptop peers (`sixpn wg create|list|remove|reset`): catalog rows plus the wg-quick config.

Everything that can be refused is checked before the catalog write, and a failure after it (the
config file cannot be written) deletes the row again, so nothing half-registered stays behind. After
a write the command waits until the gateway's agent reports (in the catalog) that it has applied it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from catalog import Catalog, Host, NotFound, Peer, State, addressing
from wgmesh import keys
from wgmesh.desired import endpoint_of
from wgmesh.errors import MeshError
from wgmesh.peerconf import PeerConfig, check_file, check_peer_name, render

WAIT = 10.0


@dataclass(frozen=True)
class Created:
    peer: Peer
    gateway: Host
    config: str
    applied: bool

    def __repr__(self) -> str:  # the config holds the private key
        return f"Created(peer={self.peer!r}, gateway={self.gateway.name}, applied={self.applied})"


def _ping_ms(address: str) -> float | None:
    try:
        done = subprocess.run(["ping", "-n", "-q", "-c", "1", "-W", "1", address], capture_output=True, text=True,
                              timeout=3, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"= [0-9.]+/([0-9.]+)/", done.stdout)
    return float(match.group(1)) if done.returncode == 0 and match else None


def choose_gateway(cat: Catalog, state: State, region: str | None) -> Host:
    """The region's gateway; without a region the nearest one: by the region table from $SIXPN_REGION,
    else by a one-packet ping to each gateway's underlay address, else the first by name."""
    gateways = state.hosts_with_role("gateway")
    if region is not None:
        cat.regions.get(region)
        here = [g for g in gateways if g.region == region]
        if not here:
            raise MeshError(f"region {region!r} has no WireGuard gateway")
        return here[0]
    if not gateways:
        raise MeshError("no WireGuard gateway is registered")
    origin = os.environ.get("SIXPN_REGION")
    if origin:
        cat.regions.get(origin)
        best = cat.regions.nearest(origin, sorted({g.region for g in gateways}))[0]
        return next(g for g in gateways if g.region == best)
    if len(gateways) > 1:
        with ThreadPoolExecutor(len(gateways)) as pool:
            rtts = list(pool.map(lambda g: _ping_ms(g.underlay), gateways))
        measured = [(rtt, g.name, g) for rtt, g in zip(rtts, gateways, strict=True) if rtt is not None]
        if measured:
            return min(measured, key=lambda t: (t[0], t[1]))[2]
    return gateways[0]


def wait_applied(cat: Catalog, host: str, position: int, timeout: float = WAIT) -> bool:
    """Until `host`'s mesh agent reports (through the catalog, so from any host of the fleet) that it has
    applied the catalog up to `position`: that of our own write (`cat.written`), not the latest, which a host
    that applied ours already may never report."""
    deadline = time.monotonic() + timeout
    while True:
        cat.position()  # on the operator's seat, syncs the replica: the report is a host's write
        if cat.host(host).mesh_applied >= position:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _config(cat: Catalog, peer: Peer, gateway: Host, private_key: str | None) -> str:
    network = cat.network(peer.network)
    return render(PeerConfig(
        private_key=private_key, public_key=peer.public_key, address=ipaddress.IPv6Address(peer.address),
        network=network.prefix, dns=addressing.network_dns_address(network.net_id),
        gateway_public_key=gateway.public_key, endpoint=endpoint_of(gateway),
    ))


def _check_key_unused(cat: Catalog, public_key: str) -> None:
    """A public key names exactly one peer on a WireGuard interface: one already used by a host or another
    laptop would take over (or lose) that peer's traffic."""
    state = cat.snapshot()
    if any(h.public_key == public_key for h in state.hosts.values()) or any(
            p.public_key == public_key for p in state.peers.values()):
        raise MeshError("that public key is already in use by another peer or host")


def _gateway_ready(gateway: Host) -> None:
    if not gateway.public_key:
        raise MeshError(f"gateway {gateway.name} has no WireGuard key yet (is its mesh agent running?)")


def create(cat: Catalog, org: str, region: str | None = None, name: str | None = None, file: Path | None = None,
           network: str | None = None, public_key: str | None = None, wait: float = WAIT) -> Created:
    cat.org(org)
    if network is not None and cat.network(network).org != org:
        raise MeshError(f"network {network!r} belongs to another org")
    name = name or f"{org[:40]}-{secrets.token_hex(3)}"
    check_peer_name(name)
    try:
        cat.peer(name)
        raise MeshError(f"peer {name!r} already exists")
    except NotFound:
        pass
    if file is not None:
        check_file(file)
    pair = keys.KeyPair(public=keys.check_public_key(public_key)) if public_key else keys.generate()
    _check_key_unused(cat, pair.public)
    gateway = choose_gateway(cat, cat.snapshot(), region)
    _gateway_ready(gateway)
    peer = cat.create_peer(org, name, gateway.name, pair.public, network)
    position = cat.written
    try:
        config = _config(cat, peer, gateway, pair.private or None)
        if file is not None:
            keys.write_secret(file, config, overwrite=False)
    except BaseException:
        cat.delete_peer(name)
        raise
    return Created(peer, gateway, config, wait_applied(cat, gateway.name, position, wait))


def _own_peer(cat: Catalog, org: str, name: str) -> Peer:
    cat.org(org)
    peer = cat.peer(name)
    if peer.org != org:
        raise NotFound(f"no peer named {name!r} in org {org!r}")
    return peer


def list_peers(cat: Catalog, org: str) -> list[tuple[Peer, Host | None]]:
    cat.org(org)
    state = cat.snapshot()
    return [(p, state.hosts.get(p.host)) for p in sorted(state.peers.values(), key=lambda p: p.name) if p.org == org]


def remove(cat: Catalog, org: str, name: str, wait: float = WAIT) -> Peer:
    peer = _own_peer(cat, org, name)
    cat.delete_peer(name)
    if not wait_applied(cat, peer.host, cat.written, wait):
        raise MeshError(f"peer {name} is removed from the catalog, but gateway {peer.host} has not applied it "
                        f"within {wait:.0f}s (is its mesh agent running?)")
    return peer


def reset(cat: Catalog, org: str, name: str, file: Path | None = None, public_key: str | None = None,
          wait: float = WAIT) -> Created:
    """New keys for a peer: the gateway drops the old public key, so the old config stops working."""
    peer = _own_peer(cat, org, name)
    if file is not None:
        check_file(file)
    pair = keys.KeyPair(public=keys.check_public_key(public_key)) if public_key else keys.generate()
    _check_key_unused(cat, pair.public)
    gateway = cat.host(peer.host)
    _gateway_ready(gateway)
    old_key = peer.public_key
    peer = cat.set_peer_key(name, pair.public)
    position = cat.written
    try:
        config = _config(cat, peer, gateway, pair.private or None)
        if file is not None:
            keys.write_secret(file, config, overwrite=False)
    except BaseException:
        cat.set_peer_key(name, old_key)
        raise
    if not wait_applied(cat, gateway.name, position, wait):
        raise MeshError(f"peer {name} has new keys in the catalog, but gateway {gateway.name} has not applied them "
                        f"within {wait:.0f}s (is its mesh agent running?)")
    return Created(peer, gateway, config, True)
