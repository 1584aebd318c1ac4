"""The lab's plan: nodes, underlay addresses, anycast choice and the `ip -batch` lines that build it.

Pure functions of (lab id, topology, cut set); nothing here touches the system, so all of it is unit-tested.

Underlay (documentation ranges only, RFC 5737 / RFC 3849): region i (1-based, topology order) gets
198.51.100.32*(i-1)/27 and 2001:db8:i::/64; the backbone namespace `<id>-bb` holds a bridge `br-<r>` per
region carrying `.1` / `::1`, and every node namespace has a veth `eth0` on its region's bridge. Traffic
inside a region is bridged; traffic between regions is routed by the backbone through the delay line.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

from catalog import natsconf
from catalog.regions import RegionTable
from netns_lab.errors import LabError
from netns_lab.topology import Topology

Role = Literal["edge", "worker", "gateway", "client", "laptop"]
HOST_ROLES: tuple[Role, ...] = ("edge", "worker", "gateway")
LAB_ID = re.compile(r"^[a-z][a-z0-9]{0,3}$")
ANYCAST4 = ipaddress.IPv4Address("192.0.2.1")
ANYCAST6 = ipaddress.IPv6Address("2001:db8:ac::1")
UNDERLAY4 = ipaddress.IPv4Network("198.51.100.0/24")
#: Policy routing tables in the backbone: packets from br-<r> go to table TO_DELAY+i (everything into
#: dly-<r>); packets coming back out of dly-<r> look up ANYCAST+i (region i's anycast route) then main.
TO_DELAY_TABLE = 100
ANYCAST_TABLE = 200
RULE_PREF_TO_DELAY = 1000
RULE_PREF_ANYCAST = 1100
RULE_PREF_REGION_CUT = 900


def check_lab_id(lab_id: str) -> str:
    if not LAB_ID.match(lab_id):
        raise LabError(f"lab id {lab_id!r} must be 1-4 lowercase letters or digits, starting with a letter")
    return lab_id


@dataclass(frozen=True)
class RegionNet:
    code: str
    index: int  # 1-based
    net4: ipaddress.IPv4Network
    net6: ipaddress.IPv6Network

    @property
    def bridge(self) -> str:
        return f"br-{self.code}"

    @property
    def tun(self) -> str:
        return f"dly-{self.code}"

    @property
    def gw4(self) -> ipaddress.IPv4Address:
        return self.net4.network_address + 1

    @property
    def gw6(self) -> ipaddress.IPv6Address:
        return self.net6.network_address + 1

    @property
    def to_delay_table(self) -> int:
        return TO_DELAY_TABLE + self.index

    @property
    def anycast_table(self) -> int:
        return ANYCAST_TABLE + self.index


@dataclass(frozen=True)
class Node:
    name: str
    role: Role
    region: str
    index: int  # 1-based, unique in the lab
    ns: str
    v4: ipaddress.IPv4Address
    v6: ipaddress.IPv6Address
    net: RegionNet

    @property
    def bb_if(self) -> str:
        """Its veth's name on the backbone side (the node side is `eth0`)."""
        return f"v{self.index}"

    @property
    def is_host(self) -> bool:
        return self.role in HOST_ROLES

    @property
    def catalog_role(self) -> str:
        return self.role


@dataclass(frozen=True)
class Plan:
    lab_id: str
    topology: Topology
    regions: tuple[RegionNet, ...]
    nodes: tuple[Node, ...]

    @property
    def bb_ns(self) -> str:
        return f"{self.lab_id}-bb"

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise LabError(f"no node {name!r} in lab {self.lab_id} (nodes: {', '.join(n.name for n in self.nodes)})")

    def region(self, code: str) -> RegionNet:
        for region in self.regions:
            if region.code == code:
                return region
        raise LabError(f"region {code!r} is not in lab {self.lab_id}")

    def hosts(self) -> list[Node]:
        return [n for n in self.nodes if n.is_host]

    def with_role(self, role: Role) -> list[Node]:
        return [n for n in self.nodes if n.role == role]

    def wg_ifname(self, node: Node) -> str:
        """Unique across the machine: wireguard-go's socket is /var/run/wireguard/<ifname>.sock."""
        return f"{self.lab_id}wg{node.index}"

    def machine_ns(self, machine_id: str) -> str:
        return f"{self.lab_id}-m-{machine_id}"


def _numbered(prefix: str, count: int) -> list[str]:
    return [prefix if i == 0 else f"{prefix}-{i + 1}" for i in range(count)]


def make_plan(lab_id: str, topology: Topology) -> Plan:
    check_lab_id(lab_id)
    regions: list[RegionNet] = []
    nodes: list[Node] = []
    for i, spec in enumerate(topology.regions, start=1):
        net4 = ipaddress.IPv4Network((int(UNDERLAY4.network_address) + 32 * (i - 1), 27))
        net6 = ipaddress.IPv6Network(f"2001:db8:{i:x}::/64")
        region = RegionNet(spec.code, i, net4, net6)
        regions.append(region)
        names: list[tuple[str, Role]] = [(n, "edge") for n in _numbered(f"edge-{spec.code}", spec.edges)]
        names += [(n, "worker") for n in _numbered(f"worker-{spec.code}", spec.workers)]
        if spec.gateway:
            names.append((f"gw-{spec.code}", "gateway"))
        if spec.client:
            names.append((f"client-{spec.code}", "client"))
        names += [(f"laptop-{lp.name}", "laptop") for lp in topology.laptops if lp.region == spec.code]
        for k, (name, role) in enumerate(names, start=2):
            nodes.append(Node(name, role, spec.code, len(nodes) + 1, f"{lab_id}-{name}",
                              net4.network_address + k, net6.network_address + k, region))
    return Plan(lab_id, topology, tuple(regions), tuple(nodes))


# -- anycast ---------------------------------------------------------------------------------------


def anycast_choice(plan: Plan, table: RegionTable, cut: frozenset[str],
                   cut_regions: frozenset[str] = frozenset()) -> dict[str, Node | None]:
    """For each region, the edge its clients reach: the nearest live edge by RTT (ties by name),
    the way BGP's shortest path would pick it; None when every edge is cut. A region cut off the backbone
    (`cut_regions`) keeps its own edges for its own clients, and is out of reach of every other region."""
    live = [n for n in plan.with_role("edge") if n.name not in cut]
    choice: dict[str, Node | None] = {}
    for region in plan.regions:
        if region.code in cut_regions:
            reachable = [e for e in live if e.region == region.code]
        else:
            reachable = [e for e in live if e.region not in cut_regions]
        ranked = sorted(reachable, key=lambda e, r=region.code: (table.rtt(r, e.region), e.name))  # type: ignore[misc]
        choice[region.code] = ranked[0] if ranked else None
    return choice


def region_cut_lines(plan: Plan, code: str, cut: bool, family: int) -> list[str]:
    """Backbone policy rules (for `ip -4` or `ip -6`) that cut region `code` off every other region, and off
    the backbone's own processes (the operator's door), while traffic inside the region still flows (it is
    bridged, and its clients still reach its own edges through the anycast route). Prohibited at a higher
    priority than the delay line's rules, so nothing cut even enters it."""
    region = plan.region(code)

    def net(r: RegionNet) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return r.net4 if family == 4 else r.net6

    verb = "add" if cut else "del"
    lines = []
    for other in (o for o in plan.regions if o.code != code):
        lines.append(f"rule {verb} pref {RULE_PREF_REGION_CUT} iif {region.bridge} to {net(other)} prohibit")
        lines.append(f"rule {verb} pref {RULE_PREF_REGION_CUT} iif {other.bridge} to {net(region)} prohibit")
    lines.append(f"rule {verb} pref {RULE_PREF_REGION_CUT} iif lo to {net(region)} prohibit")
    return lines


# -- the NATS cluster ------------------------------------------------------------------------------


def nats_hosts(plan: Plan) -> list[Node]:
    """The host that runs each region's NATS server: its first worker (else its first host)."""
    out = []
    for region in plan.regions:
        hosts = [n for n in plan.hosts() if n.region == region.code]
        workers = [n for n in hosts if n.role == "worker"]
        if workers or hosts:
            out.append((workers or hosts)[0])
    return out


def nats_cluster(plan: Plan) -> natsconf.Cluster:
    """One NATS server per region, on its host's underlay address; no monitoring port (nothing reads it)."""
    return natsconf.Cluster(tuple(natsconf.NatsServer(n.name, n.region, str(n.v4), monitor_port=None)
                                  for n in nats_hosts(plan)), name=f"sixpn-{plan.lab_id}")


def anycast_lines(plan: Plan, choice: dict[str, Node | None]) -> list[str]:
    """`ip -batch` lines (backbone namespace) that point each region's anycast table at its edge."""
    lines = []
    for region in plan.regions:
        edge = choice[region.code]
        for addr, via in ((ANYCAST4, edge.v4 if edge else None), (ANYCAST6, edge.v6 if edge else None)):
            width = 32 if addr.version == 4 else 128
            if via is None:
                lines.append(f"route replace unreachable {addr}/{width} table {region.anycast_table}")
            else:
                # onlink: the kernel would validate the gateway with a lookup that a region cut's rules prohibit
                assert edge is not None
                lines.append(f"route replace {addr}/{width} via {via} dev {edge.net.bridge} onlink "
                             f"table {region.anycast_table}")
    return lines


# -- building --------------------------------------------------------------------------------------


def netns_lines(plan: Plan) -> list[str]:
    """Root-namespace batch: the namespaces."""
    return [f"netns add {plan.bb_ns}"] + [f"netns add {n.ns}" for n in plan.nodes]


def backbone_lines(plan: Plan) -> list[str]:
    """Backbone batch: bridges, delay-line TUNs, veths into every node, policy routes."""
    lines = ["link set lo up"]
    for r in plan.regions:
        lines += [
            f"link add {r.bridge} type bridge",
            f"addr add {r.gw4}/{r.net4.prefixlen} dev {r.bridge}",
            f"addr add {r.gw6}/{r.net6.prefixlen} dev {r.bridge} nodad",
            f"link set {r.bridge} up",
            # A persistent TUN, so routes can point at it before the delay line attaches; a deep queue so
            # a burst waiting for the delay line is not dropped.
            f"tuntap add dev {r.tun} mode tun",
            f"link set {r.tun} txqueuelen 10000 up",
            f"route add default dev {r.tun} table {r.to_delay_table}",
            f"route add ::/0 dev {r.tun} table {r.to_delay_table}",
        ]
    for n in plan.nodes:
        lines += [
            f"link add {n.bb_if} type veth peer name eth0 netns {n.ns}",
            f"link set {n.bb_if} master {n.net.bridge} up",
        ]
    return lines


def backbone_rule_lines(plan: Plan) -> list[str]:
    """Policy rules (run once with -4 and once with -6): routed packets from a region's bridge enter
    its delay line; what the delay line hands back looks up that region's anycast table, then main."""
    lines = []
    for r in plan.regions:
        lines.append(f"rule add pref {RULE_PREF_TO_DELAY} iif {r.bridge} lookup {r.to_delay_table}")
        lines.append(f"rule add pref {RULE_PREF_ANYCAST} iif {r.tun} lookup {r.anycast_table}")
    return lines


def node_lines(plan: Plan, node: Node) -> list[str]:
    lines = [
        "link set lo up",
        f"addr add {node.v4}/{node.net.net4.prefixlen} dev eth0",
        f"addr add {node.v6}/{node.net.net6.prefixlen} dev eth0 nodad",
        "link set eth0 up",
        f"route add default via {node.net.gw4}",
        f"route add ::/0 via {node.net.gw6}",
    ]
    if node.role == "edge":
        lines += [f"addr add {ANYCAST4}/32 dev lo", f"addr add {ANYCAST6}/128 dev lo"]
    if node.role == "worker":
        lines.append("addr add fdaa::3/128 dev lo")  # the DNS address machines use (contract)
    return lines


#: sysctls per namespace kind. Every host forwards IPv6 (contract); the backbone routes both families and
#: must not reverse-path-filter anycast replies (their source, 192.0.2.1, is routed per source region).
HOST_SYSCTLS = {
    "net/ipv6/conf/all/forwarding": "1",
    "net/ipv4/ip_forward": "1",
    "net/ipv6/conf/default/accept_dad": "0",
    "net/ipv6/conf/all/accept_dad": "0",
}
BACKBONE_SYSCTLS = {
    "net/ipv4/ip_forward": "1",
    "net/ipv6/conf/all/forwarding": "1",
    "net/ipv4/conf/all/rp_filter": "0",
    "net/ipv4/conf/default/rp_filter": "0",
    "net/ipv4/conf/all/send_redirects": "0",
    "net/ipv4/conf/default/send_redirects": "0",
    "net/ipv6/conf/default/accept_dad": "0",
}
MACHINE_SYSCTLS = {
    "net/ipv6/conf/default/accept_dad": "0",
    "net/ipv6/conf/all/accept_dad": "0",
}
