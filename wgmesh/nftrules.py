"""The isolation ruleset: one nftables table owned by sixpn, rendered from the catalog (pure) and
replaced atomically (`nft -f` runs a file as one transaction, so there is never a moment without it).

Policy (spec 6pn-and-mesh.md "Isolation"): for anything touching fdaa::/16, accept only
- both ends in the same network /48 (the infrastructure /48 fdaa::/48 holds the hosts' mesh addresses),
- an edge host's mesh address to a machine's declared service port on this host,
- DNS at fdaa::3 (port 53) from a machine on this worker,
- replies of accepted flows (conntrack); everything else is dropped and counted.
Strict reverse-path filtering: the kernel's rp_filter sysctl covers IPv4 only, so the IPv6 twin is a
`fib saddr . iif oif missing drop` rule (nft(8) FIB EXPRESSIONS), which stops a machine from spoofing
a source of another network.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from catalog import State, addressing

TABLE = "sixpn"
FAMILY = "inet"
SIXPN_SPACE = ipaddress.IPv6Network("fdaa::/16")
# Neighbor discovery uses the 6PN source address towards multicast: never filter it (RFC 4861 §4).
_ND_TYPES = "nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert"


@dataclass(frozen=True)
class Rules:
    networks: tuple[tuple[str, int], ...]  # (name, net id), sorted by id
    edges: tuple[ipaddress.IPv6Address, ...]
    services: tuple[tuple[ipaddress.IPv6Address, str, int], ...]  # (machine address, tcp|udp, port)
    local_dns: bool  # a worker: machines query fdaa::3 on this host


def service_ports(state: State, host: str) -> tuple[tuple[ipaddress.IPv6Address, str, int], ...]:
    """Every (machine, protocol, internal port) an app declares, for the machines on `host`."""
    out: set[tuple[ipaddress.IPv6Address, str, int]] = set()
    for machine in state.machines.values():
        app = state.apps.get(machine.app)
        if machine.host != host or app is None:
            continue
        for service in app.config.services:
            if service.processes and machine.process_group not in service.processes:
                continue
            proto = "udp" if service.protocol == "udp" else "tcp"
            out.add((machine.ip, proto, service.internal_port))
    return tuple(sorted(out, key=lambda s: (int(s[0]), s[1], s[2])))


def rules_for(state: State, host: str) -> Rules:
    me = state.hosts.get(host)
    networks = tuple(sorted(((n.name, n.net_id) for n in state.networks.values()), key=lambda t: t[1]))
    edges = tuple(sorted(h.mesh_address for h in state.hosts.values() if h.role == "edge"))
    return Rules(networks, edges, service_ports(state, host), me is not None and me.role == "worker")


def _elements(items: list[str]) -> str:
    return f" elements = {{ {', '.join(items)} }}" if items else ""


def render(rules: Rules) -> str:
    """The nft script: create-then-delete makes the delete safe on first run; all of it is one transaction."""
    infra = addressing.network_prefix(addressing.INFRA_NETWORK_ID)
    same_net = [f"\t\tip6 saddr {infra} ip6 daddr {infra} accept comment \"host mesh\""]
    for name, net_id in rules.networks:
        prefix = addressing.network_prefix(net_id)
        same_net.append(f"\t\tip6 saddr {prefix} ip6 daddr {prefix} accept comment \"network {name}\"")
    edges = _elements([str(a) for a in rules.edges])
    services = _elements([f"{a} . {p} . {port}" for a, p, port in rules.services])
    dns = (
        f"\t\tip6 daddr {addressing.DNS_ADDRESS} meta l4proto {{ udp, tcp }} th dport 53 "
        f"ip6 saddr {SIXPN_SPACE} accept\n" if rules.local_dns else ""
    )
    return (
        f"table {FAMILY} {TABLE}\n"
        f"delete table {FAMILY} {TABLE}\n"
        f"table {FAMILY} {TABLE} {{\n"
        f"\tset edges {{\n\t\ttype ipv6_addr;{edges}\n\t}}\n"
        f"\tset services {{\n\t\ttype ipv6_addr . inet_proto . inet_service;{services}\n\t}}\n"
        "\tchain rpfilter {\n"
        "\t\ttype filter hook prerouting priority raw; policy accept;\n"
        "\t\tiif lo accept\n"
        f"\t\tip6 saddr {SIXPN_SPACE} fib saddr . iif oif missing counter drop comment \"strict rp filter\"\n"
        "\t}\n"
        "\tchain input {\n"
        "\t\ttype filter hook input priority filter; policy accept;\n"
        "\t\tiif lo accept\n"
        f"\t\ticmpv6 type {{ {_ND_TYPES} }} accept\n"
        f"{dns}"
        f"\t\tip6 saddr {SIXPN_SPACE} jump isolate\n"
        f"\t\tip6 daddr {SIXPN_SPACE} jump isolate\n"
        "\t}\n"
        "\tchain forward {\n"
        "\t\ttype filter hook forward priority filter; policy accept;\n"
        f"\t\tip6 saddr {SIXPN_SPACE} jump isolate\n"
        f"\t\tip6 daddr {SIXPN_SPACE} jump isolate\n"
        "\t}\n"
        "\tchain isolate {\n"
        "\t\tct state established,related accept\n"
        + "\n".join(same_net) + "\n"
        "\t\tip6 saddr @edges ip6 daddr . meta l4proto . th dport @services accept comment \"edge to service\"\n"
        "\t\tcounter drop comment \"cross-network\"\n"
        "\t}\n"
        "}\n"
    )
