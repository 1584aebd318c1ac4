"""The catalog's rows as frozen dataclasses, and their JSON codec."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from typing import Any, Literal

from catalog import addressing, appconfig
from catalog.appconfig import AppConfig

HostRole = Literal["worker", "edge", "gateway"]
MachineState = Literal["created", "started", "stopped", "failed"]
Desired = Literal["started", "stopped"]
Health = Literal["", "passing", "critical"]  # "" = no check ran yet, or the app declares none
HOST_ROLES: tuple[HostRole, ...] = ("worker", "edge", "gateway")
MACHINE_STATES: tuple[MachineState, ...] = ("created", "started", "stopped", "failed")
DESIRED_STATES: tuple[Desired, ...] = ("started", "stopped")
HEALTH_STATES: tuple[Health, ...] = ("", "passing", "critical")
#: A machine's observed fields: written only by the agent of the host it runs on (`Catalog.observe_machine`),
#: ordered by `obs_gen` so that a stale report never overwrites a newer one. Every other field is global.
OBSERVED_FIELDS = ("state", "restarts", "exit_code", "health", "obs_gen")
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
    # Host-owned: the catalog position (`Catalog.position()`, the same on every replica) up to which this host's
    # mesh agent has applied its peers; written only by the host itself, and only ever forward.
    mesh_applied: int = 0

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
    desired: Desired = "started"  # global: what `scale`/`machines start|stop` asked for
    restarts: int = 0  # observed: restarts by the host agent's restart policy
    exit_code: int | None = None  # observed: the last exit (negative: killed by that signal)
    health: Health = ""  # observed: the app's checks as the host agent ran them
    obs_gen: int = 0  # generation of the observed fields; only a higher one replaces them

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


def merge_observed(current: Machine, incoming: Machine) -> Machine:
    """`incoming` with the observed fields of whichever of the two reports is newer (a global write carries
    the observed fields its writer last saw; they must not roll back a newer report of the host's agent)."""
    if current.obs_gen <= incoming.obs_gen:
        return incoming
    return replace(incoming, **{name: getattr(current, name) for name in OBSERVED_FIELDS})


def merge_host_observed(current: Host, incoming: Host) -> Host:
    """`incoming` (a global write, which never owns `mesh_applied`) with the host's own latest report."""
    if incoming.mesh_applied >= current.mesh_applied:
        return incoming
    return replace(incoming, mesh_applied=current.mesh_applied)


Record = Org | Network | App | Host | Machine | Peer
_CLASSES: dict[str, type[Any]] = {
    "org": Org, "network": Network, "app": App, "host": Host, "machine": Machine, "peer": Peer,
}


_FIELDS: dict[type[Any], tuple[str, ...]] = {cls: tuple(f.name for f in fields(cls)) for cls in _CLASSES.values()}


def kind_of(record: Record) -> Kind:
    for kind, cls in _CLASSES.items():
        if isinstance(record, cls):
            return kind  # type: ignore[return-value]
    raise TypeError(record)


def key_of(record: Record) -> str:
    return record.id if isinstance(record, Machine) else record.name


def encode(record: Record) -> dict[str, Any]:
    """The row as JSON-ready fields. Shallow, unlike `dataclasses.asdict`, which deep-copies every nested value
    (an app's config) and was most of a replica's cost per applied change: the rows hold no dataclasses."""
    return {name: getattr(record, name) for name in _FIELDS[type(record)]}


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
