"""6PN addressing: fdaa:<network 32>:<host 32>:<machine 32>:<free 16> (spec 6pn-and-mesh.md).

Every id is a 32-bit integer handed out by a counter in the catalog, so two allocations never
produce the same address: the address is a pure function of (network id, host id, slot id) and
each of those is unique in its own space.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from catalog.errors import InvalidWrite

PREFIX = 0xFDAA
MAX_ID = 0xFFFF_FFFF
#: The DNS server inside a machine's view (spec: `fdaa::3`).
DNS_ADDRESS = ipaddress.IPv6Address("fdaa::3")
#: Network id 0 is the infrastructure network: host mesh addresses live there, no org gets it.
INFRA_NETWORK_ID = 0


def _check_id(value: int, what: str) -> None:
    if not 0 <= value <= MAX_ID:
        raise InvalidWrite(f"{what} {value} is outside 0..{MAX_ID:#x}")


def _join(network_id: int, host_id: int, slot_id: int, low: int) -> ipaddress.IPv6Address:
    _check_id(network_id, "network id")
    _check_id(host_id, "host id")
    _check_id(slot_id, "machine id")
    value = (PREFIX << 112) | (network_id << 80) | (host_id << 48) | (slot_id << 16) | low
    return ipaddress.IPv6Address(value)


def network_prefix(network_id: int) -> ipaddress.IPv6Network:
    """The network's /48: everything inside it may talk (fdaa:0:5463::/48)."""
    return ipaddress.IPv6Network((_join(network_id, 0, 0, 0), 48))


def network_dns_address(network_id: int) -> ipaddress.IPv6Address:
    """`<network /48>::3`, where WireGuard peers reach the DNS server."""
    return _join(network_id, 0, 0, 3)


def host_prefix(network_id: int, host_id: int) -> ipaddress.IPv6Network:
    """The /80 of one network that lives on one host; a mesh peer's AllowedIPs entry."""
    return ipaddress.IPv6Network((_join(network_id, host_id, 0, 0), 80))


def host_mesh_address(host_id: int) -> ipaddress.IPv6Address:
    """A host's own address on the mesh, in the infrastructure network."""
    return _join(INFRA_NETWORK_ID, host_id, 0, 1)


def machine_prefix(network_id: int, host_id: int, slot_id: int) -> ipaddress.IPv6Network:
    """A machine's /112."""
    return ipaddress.IPv6Network((_join(network_id, host_id, slot_id, 0), 112))


def machine_address(network_id: int, host_id: int, slot_id: int) -> ipaddress.IPv6Address:
    """A machine's own address: `::2` of its /112."""
    return _join(network_id, host_id, slot_id, 2)


def machine_gateway(network_id: int, host_id: int, slot_id: int) -> ipaddress.IPv6Address:
    """The worker's side of the machine's /112 (`::1`)."""
    return _join(network_id, host_id, slot_id, 1)


def machine_link(machine_id: str) -> str:
    """The name of a machine's veth on its worker: `m<machine id>`, 15 characters (Linux's limit). Whoever
    builds machines names it so; the mesh agent's isolation lets 6PN in from exactly these interfaces, each
    bound to its machine's /112 (wgmesh/nftrules.py)."""
    return f"m{machine_id}"


def peer_prefix(network_id: int, host_id: int, slot_id: int) -> ipaddress.IPv6Network:
    """A WireGuard peer's /120, carved from its gateway host's space in the network."""
    return ipaddress.IPv6Network((_join(network_id, host_id, slot_id, 0x100), 120))


def peer_address(network_id: int, host_id: int, slot_id: int) -> ipaddress.IPv6Address:
    return _join(network_id, host_id, slot_id, 0x102)


@dataclass(frozen=True)
class SixPN:
    """The fields of a 6PN address."""

    network_id: int
    host_id: int
    slot_id: int
    low: int

    @property
    def network(self) -> ipaddress.IPv6Network:
        return network_prefix(self.network_id)


def parse(address: str | ipaddress.IPv6Address) -> SixPN:
    """Split a 6PN address into its fields; anything outside fdaa::/16 is an error."""
    try:
        ip = ipaddress.IPv6Address(address)
    except ValueError as exc:
        raise InvalidWrite(f"not an IPv6 address: {address!r}") from exc
    value = int(ip)
    if value >> 112 != PREFIX:
        raise InvalidWrite(f"not a 6PN address (outside fdaa::/16): {ip}")
    return SixPN(
        network_id=(value >> 80) & MAX_ID,
        host_id=(value >> 48) & MAX_ID,
        slot_id=(value >> 16) & MAX_ID,
        low=value & 0xFFFF,
    )


def network_id_of(address: str | ipaddress.IPv6Address) -> int:
    return parse(address).network_id


def format_network_id(network_id: int) -> str:
    """`0:5463`, the form used in docs and logs."""
    _check_id(network_id, "network id")
    return f"{network_id >> 16:x}:{network_id & 0xFFFF:x}"


def parse_network_id(text: str) -> int:
    parts = text.split(":")
    try:
        if len(parts) == 2:
            hi, lo = (int(p, 16) for p in parts)
            if hi > 0xFFFF or lo > 0xFFFF:
                raise ValueError(text)
            return (hi << 16) | lo
        value = int(text, 0)
    except ValueError as exc:
        raise InvalidWrite(f"not a network id: {text!r}") from exc
    _check_id(value, "network id")
    return value
