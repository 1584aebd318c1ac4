"""What the proxy routes from, derived from the catalog `State`: apps by Host header, their machines, ports.

Rebuilt (cheaply) on every batch of catalog changes; requests in flight keep the table they started with.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from catalog import State
from catalog.appconfig import Concurrency, Service
from edge_proxy.http1.head import host_name
from edge_proxy.routing import app_for_host

Resolver = Callable[["MachineRoute"], tuple[str, int]]


@dataclass(frozen=True)
class MachineRoute:
    id: str
    app: str
    region: str
    host: str
    address: str
    port: int
    started: bool  # routable: started, and not failing the checks its host agent runs
    reported: bool = False  # its host's agent publishes its health: this edge does not probe it


@dataclass(frozen=True)
class AppRoute:
    name: str
    network: str
    service: Service | None
    machines: tuple[MachineRoute, ...]

    @property
    def concurrency(self) -> Concurrency:
        return self.service.concurrency if self.service is not None else Concurrency()

    @property
    def idle_timeout(self) -> float | None:
        """The app's keep-alive timeout when it set one (the catalog's default 60 s counts as unset)."""
        if self.service is None or self.service.idle_timeout == Service.__dataclass_fields__["idle_timeout"].default:
            return None
        return self.service.idle_timeout


@dataclass(frozen=True)
class LocalPlan:
    """What routing needs of an app per request beyond the load counters, fixed for one table: its limits and
    its started machines in the edge's region, in catalog order (the order `Chooser` sees them in)."""

    kind: str
    soft: int
    hard: int | None
    local: tuple[MachineRoute, ...]
    idle_timeout: float | None


def owned_hostnames(claims: dict[str, list[str]], domain: str,
                    apps: Collection[str]) -> tuple[dict[str, str], frozenset[str]]:
    """The hostname -> app map from each hostname's claimants: a name with one claimant is that app's; a name
    claimed by several apps belongs to none of them (the catalog refuses a second claim, so this only guards
    against a catalog that somehow holds two; which one is the rightful owner cannot be told here); a name of
    the form `<app>.<domain>` for an existing app is that app's whoever lists it (`app_for_host` checks it first)."""
    suffix = "." + domain.lower().strip(".")
    owned: dict[str, str] = {}
    contested: set[str] = set()
    for hostname, names in claims.items():
        if hostname.endswith(suffix) and hostname[: -len(suffix)] in apps:
            continue
        if len(set(names)) == 1:
            owned[hostname] = names[0]
        else:
            contested.add(hostname)
    return owned, frozenset(contested)


class RoutingTable:
    def __init__(self, state: State, domain: str) -> None:
        self.domain = domain
        self.version = state.version
        self.apps: dict[str, AppRoute] = {}
        self.hostnames: dict[str, str] = {}
        #: Hostnames that more than one app lists (a catalog that lost its unique claims): routed to none.
        self.contested: frozenset[str] = frozenset()
        claims: dict[str, list[str]] = {}
        self.host_regions = {h.name: h.region for h in state.hosts.values()}
        self._by_header: dict[bytes, AppRoute | None] = {}
        self.machines: dict[str, MachineRoute] = {}  # by id, across apps (ids are unique)
        self._plans: dict[tuple[str, str], LocalPlan] = {}
        for app in state.apps.values():
            try:
                config = app.config
            except Exception:  # a config the catalog accepted but we cannot read: route nothing to it
                continue
            service = config.http_service
            port = service.internal_port if service is not None else 8080
            machines = tuple(
                MachineRoute(m.id, m.app, m.region, m.host, m.address, port,
                             m.state == "started" and m.health != "critical", reported=m.health != "")
                for m in state.machines_of(app.name)
                if not service or not service.processes or m.process_group in service.processes
            )
            self.apps[app.name] = AppRoute(app.name, app.network, service, machines)
            self.machines.update((m.id, m) for m in machines)
            for hostname in config.hostnames:
                claims.setdefault(hostname, []).append(app.name)
        self.hostnames, self.contested = owned_hostnames(claims, self.domain, self.apps)

    def app_for_host(self, host: str) -> AppRoute | None:
        name = app_for_host(host, self.domain, self.hostnames, self.apps)
        return None if name is None else self.apps[name]

    def app_for_host_header(self, host: bytes) -> AppRoute | None:
        """`app_for_host` on the raw Host header, memoized per table (bounded)."""
        try:
            return self._by_header[host]
        except KeyError:
            pass
        route = self.app_for_host(host_name(host))
        if len(self._by_header) > 4096:
            self._by_header.clear()
        self._by_header[host] = route
        return route

    def local_plan(self, app: AppRoute, region: str) -> LocalPlan:
        """Memoized per table, i.e. per catalog version: the table is rebuilt on every change."""
        plan = self._plans.get((app.name, region))
        if plan is None:
            conc = app.concurrency
            local = tuple(m for m in app.machines if m.started and m.region == region)
            plan = self._plans[(app.name, region)] = LocalPlan(conc.type, conc.soft_limit, conc.hard_limit, local,
                                                               app.idle_timeout)
        return plan

    def machine(self, machine_id: str) -> MachineRoute | None:
        return self.machines.get(machine_id)


def default_resolver(machine: MachineRoute) -> tuple[str, int]:
    """Over the mesh: the machine's 6PN address and the app's internal_port."""
    return machine.address, machine.port


def override_resolver(overrides: dict[str, str]) -> Resolver:
    """`{machine id or 6PN address: "host:port"}` for standalone runs and loopback tests."""
    parsed: dict[str, tuple[str, int]] = {}
    for key, target in overrides.items():
        host, _, port = target.rpartition(":")
        parsed[key] = (host.strip("[]"), int(port))

    def resolve(machine: MachineRoute) -> tuple[str, int]:
        return parsed.get(machine.id) or parsed.get(machine.address) or (machine.address, machine.port)

    return resolve
