"""The isolation ruleset: one nftables table owned by sixpn, rendered from the catalog (pure) and
replaced atomically (`nft -f` runs a file as one transaction, so there is never a moment without it).

Policy (spec 6pn-and-mesh.md "Isolation"; docs/security.md "Packet isolation"), per interface:
- 6PN traffic (source or destination in fdaa::/16) enters a host only from its WireGuard interface
  (cryptokey routing binds each peer, host or laptop, to its AllowedIPs) or from one of its machines'
  veths; never from the underlay or any other interface (chain `ingress`).
- A machine's veth carries only that machine's /112 as source (and link-local, which the kernel never
  forwards): no spoofed 6PN address and no non-6PN address either, so a machine cannot send forged
  packets onto the underlay; machines have no IPv4 (chain `from_machine`).
- Nothing from or to fdaa::/16 leaves a host except into WireGuard, a machine's veth or lo
  (chain `egress`): 6PN never crosses the underlay unencrypted, whatever the routing table says.
- Between networks, default deny (chain `isolate`): both ends in the same network /48 (the
  infrastructure /48 fdaa::/48 holds the hosts' mesh addresses); an edge host's mesh address to a machine's
  declared service port on this host; DNS at fdaa::3 (port 53) from a machine on this worker; replies of
  accepted flows; ICMP errors related to an accepted flow only from the flow's own networks or from a
  host (chain `related`). Everything else is dropped and counted.
These replace a `fib saddr . iif oif missing` reverse-path rule, which passed any source covered by the
underlay's default route (issue 15).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from catalog import State, addressing
from wgmesh.errors import MeshError

TABLE = "sixpn"
FAMILY = "inet"
SIXPN_SPACE = ipaddress.IPv6Network("fdaa::/16")
# Neighbor discovery uses the 6PN source address towards multicast: never filter it (RFC 4861 §4).
_ND_TYPES = "nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert"
_IFNAME = re.compile(r"^[A-Za-z0-9_.=+-]{1,15}$")  # what Linux accepts and nft can quote as is


@dataclass(frozen=True)
class Rules:
    wg_ifname: str  # this host's WireGuard interface
    networks: tuple[tuple[str, int], ...]  # (name, net id), sorted by id
    edges: tuple[ipaddress.IPv6Address, ...]
    services: tuple[tuple[ipaddress.IPv6Address, str, int], ...]  # (machine address, tcp|udp, port)
    machines: tuple[tuple[str, ipaddress.IPv6Network], ...]  # (veth on this host, the machine's /112)
    local_dns: bool  # a worker: machines query fdaa::3 on this host

    def __post_init__(self) -> None:
        for name in (self.wg_ifname, *(link for link, _ in self.machines)):
            if not _IFNAME.match(name):
                raise MeshError(f"not an interface name: {name!r}")


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


def machine_links(state: State, host: str) -> tuple[tuple[str, ipaddress.IPv6Network], ...]:
    """(veth name, /112) of every machine placed on `host`, whatever its state: its veth exists from the
    moment the machine is built until it is removed."""
    return tuple(sorted((addressing.machine_link(m.id), m.prefix) for m in state.machines.values() if m.host == host))


def rules_for(state: State, host: str, wg_ifname: str) -> Rules:
    me = state.hosts.get(host)
    networks = tuple(sorted(((n.name, n.net_id) for n in state.networks.values()), key=lambda t: t[1]))
    edges = tuple(sorted(h.mesh_address for h in state.hosts.values() if h.role == "edge"))
    return Rules(wg_ifname, networks, edges, service_ports(state, host), machine_links(state, host),
                 me is not None and me.role == "worker")


def _elements(items: list[str]) -> str:
    return f" elements = {{ {', '.join(items)} }}" if items else ""


def _chain(name: str, lines: list[str], hook: str = "") -> str:
    head = f"\t\ttype filter hook {hook}; policy accept;\n" if hook else ""
    return f"\tchain {name} {{\n{head}" + "".join(f"\t\t{line}\n" for line in lines) + "\t}\n"


def render(rules: Rules) -> str:
    """The nft script: create-then-delete makes the delete safe on first run; all of it is one transaction."""
    space = SIXPN_SPACE
    wg = f'"{rules.wg_ifname}"'
    infra = addressing.network_prefix(addressing.INFRA_NETWORK_ID)
    nets = [(name, addressing.network_prefix(net_id)) for name, net_id in rules.networks]
    same_net = [f'ip6 saddr {infra} ip6 daddr {infra} accept comment "host mesh"']
    same_net += [f'ip6 saddr {p} ip6 daddr {p} accept comment "network {name}"' for name, p in nets]
    # An ICMP error (the only `related` traffic: no conntrack helpers) names a flow in its quoted packet;
    # conntrack trusts the quote. So the error's own source must belong to one of that flow's networks,
    # or be a host (a WireGuard hop reporting Packet Too Big from its mesh address).
    related = [f'ip6 saddr {infra} accept comment "from a host"']
    for name, p in nets:
        related += [f'ip6 saddr {p} ct original ip6 saddr {p} accept comment "network {name}"',
                    f'ip6 saddr {p} ct original ip6 daddr {p} accept comment "network {name}"']
    related.append('counter drop comment "related from another network"')
    dns = [f"iifname @machine_links ip6 daddr {addressing.DNS_ADDRESS} meta l4proto {{ udp, tcp }} th dport 53 accept"
           ] if rules.local_dns else []
    edges = _elements([str(a) for a in rules.edges])
    services = _elements([f"{a} . {p} . {port}" for a, p, port in rules.services])
    links = _elements([f'"{link}"' for link, _ in rules.machines])
    sources = _elements([f'"{link}" . {prefix}' for link, prefix in rules.machines])
    return (
        f"table {FAMILY} {TABLE}\n"
        f"delete table {FAMILY} {TABLE}\n"
        f"table {FAMILY} {TABLE} {{\n"
        f"\tset edges {{\n\t\ttype ipv6_addr;{edges}\n\t}}\n"
        f"\tset services {{\n\t\ttype ipv6_addr . inet_proto . inet_service;{services}\n\t}}\n"
        f"\tset machine_links {{\n\t\ttype ifname;{links}\n\t}}\n"
        f"\tset machine_sources {{\n\t\ttype ifname . ipv6_addr; flags interval;{sources}\n\t}}\n"
        + _chain("ingress", [
            "iif lo accept",
            f'iifname {wg} accept comment "WireGuard: each peer only from its allowed-ips"',
            "iifname @machine_links jump from_machine",
            f'ip6 saddr {space} counter drop comment "6PN source from the underlay"',
            f'ip6 daddr {space} counter drop comment "to 6PN from the underlay"',
        ], "prerouting priority raw")
        + _chain("from_machine", [
            'iifname . ip6 saddr @machine_sources accept comment "its own /112"',
            'ip6 saddr fe80::/10 accept comment "link-local: never forwarded"',
            'ip6 saddr :: ip6 daddr ff02::/16 accept comment "DAD, MLD"',
            'counter drop comment "spoofed source from a machine"',
        ])
        + _chain("input", [
            "iif lo accept",
            f"icmpv6 type {{ {_ND_TYPES} }} accept",
            *dns,
            f"ip6 saddr {space} jump isolate",
            f"ip6 daddr {space} jump isolate",
        ], "input priority filter")
        + _chain("forward", [
            "jump egress",
            f"ip6 saddr {space} jump isolate",
            f"ip6 daddr {space} jump isolate",
        ], "forward priority filter")
        + _chain("output", ["jump egress"], "output priority filter")
        + _chain("egress", [
            "oif lo return",
            f"oifname {wg} return",
            "oifname @machine_links return",
            f'ip6 daddr {space} counter drop comment "to 6PN onto the underlay"',
            f'ip6 saddr {space} counter drop comment "6PN source onto the underlay"',
        ])
        + _chain("isolate", [
            "ct state established accept",
            "ct state related jump related",
            *same_net,
            'ip6 saddr @edges ip6 daddr . meta l4proto . th dport @services accept comment "edge to service"',
            'counter drop comment "cross-network"',
        ])
        + _chain("related", related)
        + "}\n"
    )
