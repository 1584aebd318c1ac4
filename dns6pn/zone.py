"""The `.internal` zone of one 6PN network, as the catalog says it is: names → record sets.

Pure: built from a `catalog.State`, no I/O. `NetworkZone.lookup(labels, region)` maps a lowercased name
(labels without the trailing `internal`) to a `Node`: the AAAA addresses and/or TXT value the name owns,
an empty node for a name that exists without data (an empty non-terminal, RFC 8020), or None when the
name does not exist. The spec's table (specs/internal-dns.md) is the list of names; answers list started
machines unless the name starts with `all.`, and never list `skip_dns` machines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from catalog import Machine, Network, NotFound, RegionTable, State

#: A TOP<N> larger than this is still answered (with every machine); it only bounds the integer parse.
MAX_TOP = 10_000
_FAR = 1e9


@dataclass(frozen=True)
class Node:
    """What one name owns. Both empty: the name exists with no data (NODATA for every type)."""

    aaaa: tuple[str, ...] = ()
    txt: str | None = None


EMPTY = Node()


@dataclass
class AppRecords:
    name: str
    machines: list[Machine] = field(default_factory=list)  # every DNS-visible machine, by id

    @property
    def started(self) -> list[Machine]:
        return [m for m in self.machines if m.state == "started"]


def _aaaa(machines: Iterable[Machine]) -> Node:
    return Node(aaaa=tuple(m.address for m in machines))


def _txt(values: Iterable[str], sep: str) -> Node:
    joined = sep.join(values)
    return Node(txt=joined) if joined else EMPTY


class NetworkZone:
    """The names one network's members see; rebuilt (lazily) after each catalog change."""

    def __init__(self, state: State, network: Network, regions: RegionTable) -> None:
        self.network = network
        self.regions = regions
        self.region_codes = set(regions.regions) | {h.region for h in state.hosts.values()}
        self.apps: dict[str, AppRecords] = {
            a.name: AppRecords(a.name) for a in state.apps_in_network(network.name)
        }
        for machine in sorted(state.machines.values(), key=lambda m: m.id):
            app = self.apps.get(machine.app)
            if app is not None and not machine.skip_dns:
                app.machines.append(machine)
        self.peers = {p.name.lower(): p for p in state.peers_in_network(network.name)}
        self.dns_address = str(network.dns_address)

    # -- lookup ----------------------------------------------------------------------------------

    def lookup(self, labels: tuple[str, ...], region: str | None) -> Node | None:
        """`labels` lowercased, without the final `internal` label; `region`: the querying host's."""
        if not labels:
            return EMPTY  # the apex: its SOA is added by the caller
        handler = self._top_level.get(labels[-1])
        if handler is not None:
            return handler(self, labels[:-1])
        app = self.apps.get(labels[-1])
        if app is None:
            return None
        return self._app_name(app, labels[:-1], region)

    def _apps_txt(self, rest: tuple[str, ...]) -> Node | None:
        return _txt(sorted(self.apps), ",") if not rest else None

    def _api(self, rest: tuple[str, ...]) -> Node | None:
        return Node(aaaa=(self.dns_address,)) if not rest else None

    def _peer(self, rest: tuple[str, ...]) -> Node | None:
        if not rest:
            names = (p.name for _, p in sorted(self.peers.items()) if not p.name.lower().startswith("interactive-"))
            return _txt(names, ",")
        peer = self.peers.get(rest[0]) if len(rest) == 1 else None
        return None if peer is None else Node(aaaa=(peer.address,))

    def _instances(self, rest: tuple[str, ...]) -> Node | None:
        if rest not in ((), ("all",)):
            return None
        records = []
        for app in sorted(self.apps.values(), key=lambda a: a.name):
            for m in app.machines if rest else app.started:
                records.append(f"instance={m.id},app={m.app},ip={m.address},region={m.region}")
        return _txt(records, ";")

    _top_level: dict[str, Callable[[NetworkZone, tuple[str, ...]], Node | None]] = {
        "_apps": _apps_txt, "_api": _api, "_peer": _peer, "_instances": _instances,
    }

    def _app_name(self, app: AppRecords, rest: tuple[str, ...], region: str | None) -> Node | None:
        """Names under `<app>.internal`, matched from the right (the label next to the app first)."""
        if not rest:
            return _aaaa(app.started)
        head = rest[-1]
        if len(rest) == 1:
            return self._app_leaf(app, head)
        if len(rest) == 2 and head in ("vms", "regions") and rest[0] == "all":
            return self._vms(app.machines) if head == "vms" else self._regions(app.machines)
        if head == "vm":
            found = next((m for m in app.machines if m.id == rest[0]), None) if len(rest) == 2 else None
            return None if found is None else _aaaa(m for m in (found,) if m.state == "started")
        if head == "process":
            groups = {m.process_group for m in app.machines}
            if len(rest) != 2 or rest[0] not in groups:
                return None
            return _aaaa(m for m in app.started if m.process_group == rest[0])
        if head == "of":
            return self._nearest(app, rest[:-1], region)
        if head == "_metadata":
            return self._metadata(app, rest[:-1])
        return None

    def _app_leaf(self, app: AppRecords, label: str) -> Node | None:
        if label == "global":
            return _aaaa(app.started)
        if label == "vms":
            return self._vms(app.started)
        if label == "regions":
            return self._regions(app.started)
        if label in ("vm", "process", "of", "_metadata"):
            return EMPTY  # empty non-terminals above the names that live under them
        if label in self.region_codes:
            return _aaaa(m for m in app.started if m.region == label)
        return None

    @staticmethod
    def _vms(machines: list[Machine]) -> Node:
        return _txt((f"{m.id} {m.region}" for m in machines), ",")

    @staticmethod
    def _regions(machines: list[Machine]) -> Node:
        return _txt(sorted({m.region for m in machines}), ",")

    def _nearest(self, app: AppRecords, rest: tuple[str, ...], region: str | None) -> Node | None:
        """`top<N>.nearest.of.<app>`; `rest` is what stands left of `of`."""
        if not rest or rest[-1] != "nearest":
            return None
        if len(rest) == 1:
            return EMPTY
        count = _top_count(rest[0]) if len(rest) == 2 else None
        if count is None:
            return None
        return _aaaa(sorted(app.started, key=lambda m: (self._rtt(region, m.region), m.id))[:count])

    def _rtt(self, origin: str | None, other: str) -> float:
        if origin is None:
            return _FAR
        try:
            return self.regions.rtt(origin, other)
        except NotFound:
            return _FAR

    def _metadata(self, app: AppRecords, rest: tuple[str, ...]) -> Node | None:
        """`<value>.<key>.kv._metadata.<app>`; `rest` is what stands left of `_metadata`."""
        if not rest or rest[-1] != "kv":
            return None
        if len(rest) == 1:
            return EMPTY
        key = rest[-2]
        having = [m for m in app.machines if any(k.lower() == key for k in m.metadata)]
        if not having or len(rest) > 3:
            return None
        if len(rest) == 2:
            return EMPTY
        value = rest[0]
        matching = [m for m in having if any(k.lower() == key and v.lower() == value for k, v in m.metadata.items())]
        if not matching:
            return None
        return _aaaa(m for m in matching if m.state == "started")


def _top_count(label: str) -> int | None:
    digits = label[3:]
    if not label.startswith("top") or not digits.isascii() or not digits.isdigit() or len(digits) > 5:
        return None
    count = int(digits)
    return count if 1 <= count <= MAX_TOP else None
