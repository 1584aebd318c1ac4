"""Parse `wg show <if> dump` (wg(8) "dump": tab-separated, one interface line then one line per peer).

The interface line starts with the private key: it is dropped here, at the first byte of parsing, so
observed state (which may be logged or compared) never holds it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import lru_cache

from wgmesh.errors import MeshError

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ObservedPeer:
    public_key: str
    endpoint: str | None
    allowed_ips: frozenset[Net]
    keepalive: int  # 0 = off
    latest_handshake: int = 0  # unix seconds, 0 = never
    rx_bytes: int = 0
    tx_bytes: int = 0
    has_psk: bool = False


@dataclass(frozen=True)
class ObservedWg:
    public_key: str
    listen_port: int
    peers: dict[str, ObservedPeer] = field(default_factory=dict)


def _none(value: str) -> str | None:
    return None if value in ("(none)", "") else value


@lru_cache(maxsize=65536)
def _nets(value: str) -> frozenset[Net]:
    """Cached: the same AllowedIPs strings come back on every reconcile, and parsing them dominates."""
    if value in ("(none)", ""):
        return frozenset()
    try:
        return frozenset(ipaddress.ip_network(item, strict=False) for item in value.split(","))
    except ValueError as exc:
        raise MeshError(f"wg dump: bad allowed-ips {value!r}") from exc


def parse_dump(text: str) -> ObservedWg:
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise MeshError("wg dump: empty output")
    head = lines[0].split("\t")
    if len(head) != 4:
        raise MeshError("wg dump: malformed interface line")
    _private, public, port = head[0], head[1], head[2]
    del _private
    peers: dict[str, ObservedPeer] = {}
    for line in lines[1:]:
        cols = line.split("\t")
        if len(cols) != 8:
            raise MeshError(f"wg dump: malformed peer line ({len(cols)} fields)")
        key, psk, endpoint, allowed, handshake, rx, tx, keepalive = cols
        try:
            peers[key] = ObservedPeer(
                public_key=key,
                endpoint=_none(endpoint),
                allowed_ips=_nets(allowed),
                keepalive=0 if keepalive == "off" else int(keepalive),
                latest_handshake=int(handshake),
                rx_bytes=int(rx),
                tx_bytes=int(tx),
                has_psk=_none(psk) is not None,
            )
        except ValueError as exc:
            raise MeshError(f"wg dump: malformed number in peer line: {exc}") from None
    return ObservedWg(public_key="" if public == "(none)" else public, listen_port=int(port), peers=peers)
