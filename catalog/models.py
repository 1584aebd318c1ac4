"""The catalog's rows as frozen dataclasses, and their JSON codec."""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Literal

from catalog import addressing, appconfig
from catalog.appconfig import AppConfig

HostRole = Literal["worker", "edge", "gateway"]
MachineState = Literal["created", "started", "stopped", "failed"]
HOST_ROLES: tuple[HostRole, ...] = ("worker", "edge", "gateway")
MACHINE_STATES: tuple[MachineState, ...] = ("created", "started", "stopped", "failed")
Kind = Literal["org", "network", "app", "host", "machine", "peer"]
KINDS: tuple[Kind, ...] = ("org", "network", "app", "host", "machine", "peer")


@dataclass(frozen=True)
class Org:
    name: str
    network: str  # its default network


@dataclass(frozen=True)
class Network:
    name: str
    org: str
    net_id: int

    @property
    def prefix(self) -> ipaddress.IPv6Network:
        return addressing.network_prefix(self.net_id)

    @property
    def dns_address(self) -> ipaddress.IPv6Address:
        return addressing.network_dns_address(self.net_id)


@dataclass(frozen=True)
class App:
    name: str
    org: str
    network: str
    config_doc: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def config(self) -> AppConfig:
        return appconfig.from_doc(self.config_doc)


@dataclass(frozen=True)
class Host:
    name: str
    region: str
    role: HostRole
    host_id: int
    underlay: str  # underlay address the mesh endpoints use (IPv4 or IPv6)
    public_key: str = ""  # WireGuard public key, base64; empty until the host's agent has one
    wg_port: int = 51820

    @property
    def mesh_address(self) -> ipaddress.IPv6Address:
        return addressing.host_mesh_address(self.host_id)


@dataclass(frozen=True)
class Machine:
    id: str  # 14 hex digits, the stable handle
    app: str
    region: str
    host: str
    address: str  # its 6PN address (::2 of its /112)
    state: MachineState = "created"
    process_group: str = "app"
    metadata: dict[str, str] = field(default_factory=dict)
    skip_dns: bool = False

    @property
    def ip(self) -> ipaddress.IPv6Address:
        return ipaddress.IPv6Address(self.address)

    @property
    def prefix(self) -> ipaddress.IPv6Network:
        return ipaddress.IPv6Network((self.address, 112), strict=False)


@dataclass(frozen=True)
class Peer:
    name: str
    org: str
    network: str
    host: str  # the gateway host it attaches to
    address: str  # ::102 of its /120
    public_key: str

    @property
    def prefix(self) -> ipaddress.IPv6Network:
        return ipaddress.IPv6Network((self.address, 120), strict=False)


Record = Org | Network | App | Host | Machine | Peer
_CLASSES: dict[str, type[Any]] = {
    "org": Org, "network": Network, "app": App, "host": Host, "machine": Machine, "peer": Peer,
}


def kind_of(record: Record) -> Kind:
    for kind, cls in _CLASSES.items():
        if isinstance(record, cls):
            return kind  # type: ignore[return-value]
    raise TypeError(record)


def key_of(record: Record) -> str:
    return record.id if isinstance(record, Machine) else record.name


def encode(record: Record) -> dict[str, Any]:
    return asdict(record)


def decode(kind: str, data: dict[str, Any]) -> Record:
    cls = _CLASSES[kind]
    record: Record = cls(**data)
    return record


@dataclass(frozen=True)
class Change:
    """One versioned write: `put` carries the new row, `delete` carries the last one."""

    version: int
    op: Literal["put", "delete"]
    record: Record

    @property
    def kind(self) -> Kind:
        return kind_of(self.record)

    @property
    def key(self) -> str:
        return key_of(self.record)
