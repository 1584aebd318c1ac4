"""The wg-quick config of a laptop peer (spec 6pn-and-mesh.md "Laptop peers"), and the checks on the
names that end up as a Linux interface name (wg-quick derives it from the file name)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from wgmesh.errors import MeshError

KEEPALIVE = 15
#: wg-quick(8) refuses any other interface name; IFNAMSIZ leaves 15 characters.
IFNAME = re.compile(r"^[A-Za-z0-9_=+.-]{1,15}$")
PEER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")


@dataclass(frozen=True)
class PeerConfig:
    private_key: str | None  # None: the user kept it (--public-key)
    public_key: str
    address: ipaddress.IPv6Address
    network: ipaddress.IPv6Network
    dns: ipaddress.IPv6Address
    gateway_public_key: str
    endpoint: str

    def __repr__(self) -> str:
        return f"PeerConfig(public_key={self.public_key!r}, address={self.address}, endpoint={self.endpoint})"


def render(conf: PeerConfig) -> str:
    if conf.private_key is None:
        key_line = f"# PrivateKey = <the private key of {conf.public_key}, which you kept: put it here>"
    else:
        key_line = f"PrivateKey = {conf.private_key}"
    return (
        "[Interface]\n"
        f"{key_line}\n"
        f"Address = {conf.address}/120\n"
        f"DNS = {conf.dns}\n"
        "\n"
        "[Peer]\n"
        f"PublicKey = {conf.gateway_public_key}\n"
        f"AllowedIPs = {conf.network}\n"
        f"Endpoint = {conf.endpoint}\n"
        f"PersistentKeepalive = {KEEPALIVE}\n"
    )


def check_peer_name(name: str) -> None:
    if not PEER_NAME.match(name):
        raise MeshError(f"peer name {name!r} must be letters, digits and '-' (max 63, not starting with '-')")


def check_file(path: Path) -> None:
    """The file must end in .conf and its stem must be a valid interface name of ≤ 15 characters."""
    if path.suffix != ".conf":
        raise MeshError(f"{path}: the file name must end in .conf (wg-quick takes the interface name from it)")
    if not IFNAME.match(path.stem):
        raise MeshError(
            f"{path}: {path.stem!r} is not a usable interface name: at most 15 letters, digits or _=+.- "
            "(wg-quick names the interface after the file)"
        )
    if path.exists():
        raise MeshError(f"{path} already exists; refusing to overwrite it")
