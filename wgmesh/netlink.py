"""Addresses and routes of the mesh, read and changed over netlink (pyroute2) in the current namespace.

Only what wgmesh owns is reported, so the planner can never remove a route or address someone else put
there: routes carry our own protocol number (rtnetlink(7) `rtm_protocol`), lo addresses are only the
`<network>::3` DNS addresses of org networks (the lab's fdaa::3 on a worker's lo is left alone).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from catalog import addressing
from catalog.errors import CatalogError
from wgmesh.errors import MeshError
from wgmesh.plan import AddAddress, AddRoute, DelAddress, DelRoute, ObservedNet

#: rtm_protocol of our routes: unassigned in /etc/iproute2/rt_protos, so `ip -6 route show proto 167`
#: lists exactly the mesh's routes.
RTPROT_SIXPN = 167
SIXPN_SPACE = ipaddress.IPv6Network("fdaa::/16")
IFA_F_NODAD = 0x02
NetOp = AddAddress | DelAddress | AddRoute | DelRoute


def _attr(msg: Any, name: str) -> Any:
    for key, value in msg["attrs"]:
        if key == name:
            return value
    return None


def _is_dns_address(ip: ipaddress.IPv6Address) -> bool:
    try:
        fields = addressing.parse(ip)
    except CatalogError:
        return False
    return fields.network_id != addressing.INFRA_NETWORK_ID and ip == addressing.network_dns_address(fields.network_id)


class Netlink:
    """One rtnetlink socket bound to the namespace this process runs in."""

    def __init__(self, wg_ifname: str) -> None:
        self.wg_ifname = wg_ifname
        self.ipr = IPRoute()

    def close(self) -> None:
        self.ipr.close()

    def index(self, ifname: str) -> int:
        found = self.ipr.link_lookup(ifname=ifname)
        if not found:
            raise MeshError(f"no interface {ifname!r} in this namespace")
        return int(found[0])

    def link_up(self, ifname: str) -> None:
        self.ipr.link("set", index=self.index(ifname), state="up")

    def _addresses(self, index: int) -> set[ipaddress.IPv6Interface]:
        out: set[ipaddress.IPv6Interface] = set()
        for msg in self.ipr.get_addr(family=socket.AF_INET6, index=index):
            address = _attr(msg, "IFA_ADDRESS")
            if address is not None:
                out.add(ipaddress.IPv6Interface(f"{address}/{msg['prefixlen']}"))
        return {a for a in out if a.ip in SIXPN_SPACE}

    def observe(self) -> ObservedNet:
        wg = self.index(self.wg_ifname)
        lo = {a for a in self._addresses(self.index("lo")) if a.network.prefixlen == 128 and _is_dns_address(a.ip)}
        routes: set[ipaddress.IPv6Network] = set()
        for msg in self.ipr.get_routes(family=socket.AF_INET6, table=254):
            if msg["proto"] != RTPROT_SIXPN or _attr(msg, "RTA_OIF") != wg:
                continue
            dst = _attr(msg, "RTA_DST")
            if dst is not None:
                routes.add(ipaddress.IPv6Network(f"{dst}/{msg['dst_len']}"))
        return ObservedNet(frozenset(self._addresses(wg)), frozenset(lo), frozenset(routes))

    def apply(self, op: NetOp) -> None:
        try:
            self._apply(op)
        except NetlinkError as exc:
            raise MeshError(f"netlink: {op}: {exc}") from None

    def _apply(self, op: NetOp) -> None:
        if isinstance(op, AddAddress | DelAddress):
            index = self.index(self.wg_ifname if op.device == "wg" else "lo")
            verb = "add" if isinstance(op, AddAddress) else "del"
            # No DAD: a /128 on a point-to-point tun (or lo) has no neighbour to collide with (RFC 4862 §5.4).
            extra = {"flags": IFA_F_NODAD} if verb == "add" else {}
            self.ipr.addr(verb, index=index, address=str(op.address.ip), prefixlen=op.address.network.prefixlen,
                          **extra)
            return
        verb = "replace" if isinstance(op, AddRoute) else "del"
        self.ipr.route(verb, dst=str(op.prefix.network_address), dst_len=op.prefix.prefixlen,
                       oif=self.index(self.wg_ifname), proto=RTPROT_SIXPN, family=socket.AF_INET6)
