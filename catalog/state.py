"""The catalog held in memory: what the proxy and DNS route from, kept current by applying changes."""

from __future__ import annotations

from dataclasses import dataclass, field

from catalog.models import App, Change, Host, Machine, Network, Org, Peer, Record


@dataclass
class State:
    """A snapshot at `version`; `apply` moves it forward one change at a time."""

    version: int = 0
    orgs: dict[str, Org] = field(default_factory=dict)
    networks: dict[str, Network] = field(default_factory=dict)
    apps: dict[str, App] = field(default_factory=dict)
    hosts: dict[str, Host] = field(default_factory=dict)
    machines: dict[str, Machine] = field(default_factory=dict)
    peers: dict[str, Peer] = field(default_factory=dict)

    def _table(self, record: Record) -> dict[str, Record]:
        tables: dict[type, dict[str, Record]] = {
            Org: self.orgs, Network: self.networks, App: self.apps,  # type: ignore[dict-item]
            Host: self.hosts, Machine: self.machines, Peer: self.peers,  # type: ignore[dict-item]
        }
        return tables[type(record)]

    def put(self, record: Record) -> None:
        key = record.id if isinstance(record, Machine) else record.name
        self._table(record)[key] = record

    def apply(self, change: Change) -> None:
        """Apply one change; a change at or below the current version is ignored (already applied)."""
        if change.version <= self.version:
            return
        table = self._table(change.record)
        if change.op == "put":
            table[change.key] = change.record
        else:
            table.pop(change.key, None)
        self.version = change.version

    # -- queries the services share ------------------------------------------------------------

    def network_of_app(self, app: str) -> Network | None:
        record = self.apps.get(app)
        return None if record is None else self.networks.get(record.network)

    def network_by_id(self, net_id: int) -> Network | None:
        return next((n for n in self.networks.values() if n.net_id == net_id), None)

    def machines_of(self, app: str, *, started_only: bool = False) -> list[Machine]:
        return sorted(
            (m for m in self.machines.values()
             if m.app == app and (not started_only or m.state == "started")),
            key=lambda m: m.id,
        )

    def apps_in_network(self, network: str) -> list[App]:
        return sorted((a for a in self.apps.values() if a.network == network), key=lambda a: a.name)

    def peers_in_network(self, network: str) -> list[Peer]:
        return sorted((p for p in self.peers.values() if p.network == network), key=lambda p: p.name)

    def hosts_with_role(self, role: str) -> list[Host]:
        return sorted((h for h in self.hosts.values() if h.role == role), key=lambda h: h.name)
