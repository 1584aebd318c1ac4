"""The resolver core: (packet, source address, catalog state) → reply bytes, or a request to forward.

No I/O. The UDP/TCP adapters call `Engine.handle`; the catalog follower calls `Engine.update`. Replies to
`.internal` questions are encoded once per (network, region, question, EDNS shape) and kept: a repeated
question costs a header parse, two dict lookups and an ID patch. Any catalog change drops the lot.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from catalog import App, Change, Machine, Network, Org, Peer, RegionTable, State, addressing, default_regions
from catalog.errors import CatalogError
from dns6pn import wire
from dns6pn.answer import choose, encode
from dns6pn.zone import NetworkZone

log = logging.getLogger("dns6pn")

DEFAULT_TTL = 5
#: Bounds on what one server holds, whatever it is sent: replies cached and sources remembered.
DEFAULT_CACHE_ENTRIES = 20_000
SOURCE_ENTRIES = 20_000
PACKET_KEY_MAX = 512  # longer queries (big EDNS options) skip the per-packet cache: bounds its memory

Scope = tuple[int, str | None]  # (network id, region of the querying host)
_FLAGS = struct.Struct("!H")


@dataclass(frozen=True, slots=True)
class Forward:
    """Not ours: relay the packet, unchanged, to the upstream resolvers (tcp: over TCP)."""

    packet: bytes
    question_end: int


class _Entry:
    """One cached reply: the full answer and, built when first needed, its truncated UDP form."""

    __slots__ = ("full", "opt", "question_end", "small")

    def __init__(self, full: bytes, question_end: int, opt: bytes) -> None:
        self.full = full
        self.question_end = question_end
        self.opt = opt
        self.small: bytes | None = None

    def truncated(self) -> bytes:
        if self.small is None:
            self.small = wire.truncated(self.full, self.question_end, self.opt)
        return self.small


class _Replies:
    """The caches of one scope (network, asker's region); sources of the same scope share one.

    `entries`: encoded replies by (qname, qtype, qclass, EDNS shape). `udp`/`tcp`: finished replies (minus
    the ID) by the query's bytes after the ID, so the hot path is two dict lookups and no tuple to hash."""

    __slots__ = ("entries", "net_id", "scope", "tcp", "udp")

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.net_id = scope[0]
        self.entries: dict[tuple[bytes, int, int, int], _Entry] = {}
        self.udp: dict[bytes, bytes] = {}
        self.tcp: dict[bytes, bytes] = {}

    def clear(self) -> None:
        self.entries.clear()
        self.udp.clear()
        self.tcp.clear()


class Engine:
    def __init__(
        self,
        state: State,
        *,
        ttl: int = DEFAULT_TTL,
        forwarding: bool = False,
        regions: RegionTable | None = None,
        source_override: str | None = None,
        max_udp: int = wire.DEFAULT_MAX_UDP,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
        fallback_region: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`forwarding`: upstreams exist (else non-`.internal` gets REFUSED). `source_override`: a 6PN
        address that stands in for every query's source (loopback tests). `fallback_region`: the region
        used for `nearest` when the querying host is unknown (the region of the host this serves on).
        `clock`: seconds since the epoch, for the zones' SOA serials (see `serial`)."""
        self.ttl = ttl
        self.forwarding = forwarding
        self.regions = regions or default_regions()
        self.source_override = source_override
        self.max_udp = max(512, min(max_udp, 65535))
        self.cache_entries = cache_entries
        self.fallback_region = fallback_region
        self.replies: dict[Scope, _Replies] = {}
        self.entry_count = 0
        self.packet_count = 0
        self.sources: dict[str | bytes, _Replies | None] = {}
        self.zones: dict[int, NetworkZone] = {}
        self.state = state
        self.networks: dict[int, Network] = {}
        self.host_regions: dict[int, str] = {}
        self.clock = clock
        self._first_serial = int(clock()) & 0xFFFFFFFF
        self.serials: dict[int, int] = {}
        self.update(state)

    # -- catalog side ------------------------------------------------------------------------------

    def update(self, state: State, changes: list[Change] | None = None) -> None:
        """The catalog moved. When `changes` only touch machines, apps and peers, forget the zones and
        replies of the networks they belong to; otherwise (or without `changes`) forget everything."""
        self.state = state
        self._bump_serials(_zones_changed(state, self.networks, changes))
        touched = _networks_touched(state, changes)
        if touched is not None:
            for net_id in touched:
                self.zones.pop(net_id, None)
            for replies in self.replies.values():
                if replies.net_id in touched:
                    replies.clear()
            return
        self.networks = {n.net_id: n for n in state.networks.values()}
        self.host_regions = {h.host_id: h.region for h in state.hosts.values()}
        self.replies.clear()
        self.entry_count = self.packet_count = 0
        self.sources.clear()
        self.zones.clear()

    def serial(self, net_id: int) -> int:
        """The SOA serial of one network's zone: never the catalog's version, which would tell every network how
        many writes all the others make. It starts at the server's start time (seconds since the epoch, as BIND's
        `serial-update-method unixtime` does) and moves, to the time of the change but at least by one, only when
        a change may alter this network's answers; so a network learns only of its own changes."""
        return self.serials.get(net_id, self._first_serial)

    def _bump_serials(self, networks: set[int] | None) -> None:
        if networks is not None and not networks:
            return
        now = int(self.clock()) & 0xFFFFFFFF
        ids = networks if networks is not None else set(self.networks) | set(self.serials)
        for net_id in ids:
            # RFC 1982 serial arithmetic: one step forward, never more than 2^31 - 1 ahead.
            self.serials[net_id] = max(self.serial(net_id) + 1, now) & 0xFFFFFFFF

    def scope_of(self, source: str | bytes) -> Scope | None:
        """The querying network (and host region) from the source address (text, or packed as in a
        sockaddr); None when it is not a member of any network."""
        replies = self.sources.get(source, False)
        if replies is False:
            scope = self._scope(self.source_override or source)
            replies = None if scope is None else self._replies(scope)
            if len(self.sources) >= SOURCE_ENTRIES:
                self.sources.clear()
            self.sources[source] = replies
        return None if replies is None else replies.scope  # type: ignore[union-attr]

    def _scope(self, source: str | bytes) -> Scope | None:
        try:
            if isinstance(source, bytes):
                if len(source) != 16:
                    return None  # IPv4: never a 6PN member
                parts = addressing.parse(ipaddress.IPv6Address(source))
            else:
                parts = addressing.parse(source.split("%", 1)[0])
        except CatalogError:
            return None
        if parts.network_id not in self.networks:
            return None
        return parts.network_id, self.host_regions.get(parts.host_id, self.fallback_region)

    def zone(self, net_id: int) -> NetworkZone:
        zone = self.zones.get(net_id)
        if zone is None:
            zone = self.zones[net_id] = NetworkZone(self.state, self.networks[net_id], self.regions)
        return zone

    # -- packet side ---------------------------------------------------------------------------------

    def handle(
        self, data: bytes, source: str | bytes, tcp: bool = False, only: int | None = None
    ) -> bytes | Forward | None:
        """The reply to one packet (None: send nothing). Never raises: a fault becomes SERVFAIL.

        `only`: the network whose `::3` received the query (on a gateway); a source of any other network is
        refused, so a laptop that reaches another org's `::3` despite the firewall still learns nothing.

        First a lookup by the packet's bytes after the ID: the same bytes from the same network always
        get the same reply (whatever its case, flags or EDNS options), so a repeat skips even parsing."""
        if data.__class__ is not bytes:
            data = bytes(data)  # a bytearray (dnslib's pack) is not hashable
        replies = self.sources.get(source)
        if replies is not None and (only is None or replies.net_id == only):
            tail = (replies.tcp if tcp else replies.udp).get(data[2:])
            if tail is not None:
                return data[:2] + tail
        try:
            return self._handle(data, source, tcp, only)
        except wire.Drop:
            return None
        except wire.Reject as exc:
            return wire.reply(data, exc.rcode, exc.question_end, exc.edns, ra=self.forwarding,
                              udp_size=self.max_udp)
        except Exception:
            log.exception("fault answering a query from %s", source)
            return wire.reply(data, wire.SERVFAIL) if len(data) >= 12 else None

    def _handle(self, data: bytes, source: str | bytes, tcp: bool, only: int | None) -> bytes | Forward | None:
        query = wire.parse(data)
        edns = query.edns
        if edns is not None and edns.version != 0:
            raise wire.Reject(wire.BADVERS, query.end, edns)
        scope = self.scope_of(source)
        if scope is None or (only is not None and scope[0] != only):
            # Not a member of any network: nothing of ours, and never an open resolver (spec).
            raise wire.Reject(wire.REFUSED, query.end, edns)
        shape = 0 if edns is None else (2 if edns.do else 1)
        key = (query.qname, query.qtype, query.qclass, shape)
        entries = self._replies(scope).entries
        entry = entries.get(key)
        if entry is None:
            if not query.internal:
                if not self.forwarding:
                    raise wire.Reject(wire.REFUSED, query.end, edns)
                return Forward(data, query.end)
            entry = self._build(query, scope)
            if self.entry_count >= self.cache_entries:
                for each in self.replies.values():
                    each.entries.clear()
                self.entry_count = 0
            entries[key] = entry
            self.entry_count += 1
        out = entry.full
        if not tcp:
            limit = 512 if edns is None else min(edns.udp_size, self.max_udp)
            if len(out) > limit:
                out = entry.truncated()
        flags = _FLAGS.unpack_from(out, 2)[0] | (query.flags & wire.ECHO_BITS)
        # ID and flags are the asker's; the question bytes are the asker's too, so its case is echoed.
        tail = _FLAGS.pack(flags) + out[4:12] + data[12 : query.end] + out[query.end :]
        if len(data) <= PACKET_KEY_MAX:
            self._remember(scope, tcp, data[2:], tail)
        return data[:2] + tail

    def _replies(self, scope: Scope) -> _Replies:
        replies = self.replies.get(scope)
        if replies is None:
            replies = self.replies[scope] = _Replies(scope)
        return replies

    def _remember(self, scope: Scope, tcp: bool, key: bytes, tail: bytes) -> None:
        # The counts only grow between full clears (a partial clear does not lower them): the bound holds.
        if self.packet_count >= self.cache_entries:
            for each in self.replies.values():
                each.udp.clear()
                each.tcp.clear()
            self.packet_count = 0
        replies = self._replies(scope)
        (replies.tcp if tcp else replies.udp)[key] = tail
        self.packet_count += 1

    def _build(self, query: wire.Query, scope: Scope) -> _Entry:
        if query.qclass not in (wire.C_IN, wire.C_ANY):
            raise wire.Reject(wire.REFUSED, query.end, query.edns)
        net_id, region = scope
        labels = tuple(label.decode("latin-1") for label in query.labels()[:-1])
        node = self.zone(net_id).lookup(labels, region)
        answer = choose(node, query.qtype, apex=not labels)
        full = encode(query, answer, ttl=self.ttl, serial=self.serial(net_id), ra=self.forwarding,
                      udp_size=self.max_udp)
        opt = full[-11:] if query.edns is not None else b""
        return _Entry(full, query.end, opt)


def _zones_changed(state: State, before: dict[int, Network], changes: list[Change] | None) -> set[int] | None:
    """The networks whose answers a batch of changes may alter (for their SOA serials), or None for every
    network: a host changed (the regions of askers and `nearest` answers depend on hosts). An org or a network of
    its own changes no other network's answers; none of them when `changes` is None (the first snapshot)."""
    if changes is None:
        return set()
    ids = {n.name: n.net_id for n in state.networks.values()}
    ids.update((n.name, n.net_id) for n in before.values())
    changed: set[int] = set()
    for change in changes:
        record = change.record
        if isinstance(record, Machine):
            app = state.apps.get(record.app)
            network = app.network if app is not None else None
        elif isinstance(record, App | Peer):
            network = record.network
        elif isinstance(record, Network):
            network = record.name
        elif isinstance(record, Org):
            continue
        else:
            return None
        if network in ids:
            changed.add(ids[network])
    return changed


def _networks_touched(state: State, changes: list[Change] | None) -> set[int] | None:
    """The networks whose names a batch of changes can alter, or None when it may alter any (an org,
    network or host changed: scoping and regions depend on those)."""
    if changes is None:
        return None
    ids = {n.name: n.net_id for n in state.networks.values()}
    touched = set()
    for change in changes:
        record = change.record
        if isinstance(record, Machine):
            app = state.apps.get(record.app)
            network = app.network if app is not None else None
        elif isinstance(record, App | Peer):
            network = record.network
        else:
            return None
        if network not in ids:
            return None
        touched.add(ids[network])
    return touched
