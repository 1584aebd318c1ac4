"""The delay line's core, without I/O: which one-way delay a packet gets, and the queues that hold
packets until their departure time.

A packet read from `dly-<r>` entered the backbone from region r's bridge; it leaves after
RTT(r, destination region) x scale / 2, so a ping's echo and reply, each delayed once, add up to the
RTT of regions.toml. The destination region comes from the destination address: a region's underlay
subnet, or for the anycast address the region of the edge that region r's anycast table points at
(the kernel routes the packet with that table once the delay line hands it back).
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def destination(packet: bytes) -> Address | None:
    """The destination address of an IPv4 (RFC 791 s3.1) or IPv6 (RFC 8200 s3) packet, None if malformed."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        return ipaddress.IPv4Address(packet[16:20])
    if version == 6 and len(packet) >= 40:
        return ipaddress.IPv6Address(packet[24:40])
    return None


@dataclass(frozen=True)
class DelayConfig:
    """What the delay line needs; written by the lab as JSON, reloaded on SIGHUP (anycast moves)."""

    tuns: dict[str, str]  # region -> TUN device name
    subnets: tuple[tuple[Network, str], ...]  # underlay subnet -> region
    rtt_ms: dict[str, dict[str, float]]  # region -> region -> RTT (already scaled)
    anycast_addrs: tuple[Address, ...]
    anycast: dict[str, str | None]  # ingress region -> region of the edge its anycast table points at

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DelayConfig:
        return cls(
            tuns={str(k): str(v) for k, v in doc["tuns"].items()},
            subnets=tuple((ipaddress.ip_network(net), str(region)) for net, region in doc["subnets"]),
            rtt_ms={str(a): {str(b): float(ms) for b, ms in row.items()} for a, row in doc["rtt_ms"].items()},
            anycast_addrs=tuple(ipaddress.ip_address(a) for a in doc["anycast_addrs"]),
            anycast={str(k): (None if v is None else str(v)) for k, v in doc["anycast"].items()},
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "tuns": self.tuns,
            "subnets": [[str(net), region] for net, region in self.subnets],
            "rtt_ms": self.rtt_ms,
            "anycast_addrs": [str(a) for a in self.anycast_addrs],
            "anycast": self.anycast,
        }


class DelayTable:
    """One-way delay in seconds for (ingress region, packet)."""

    def __init__(self, config: DelayConfig) -> None:
        self.config = config
        self._anycast = set(config.anycast_addrs)

    def region_of(self, ingress: str, address: Address) -> str | None:
        if address in self._anycast:
            return self.config.anycast.get(ingress)
        for net, region in self.config.subnets:
            if address.version == net.version and address in net:
                return region
        return None

    def delay(self, ingress: str, packet: bytes) -> float:
        """Unknown destinations pass at once: the kernel's routing will drop them, not the delay line."""
        dst = destination(packet)
        region = None if dst is None else self.region_of(ingress, dst)
        if region is None:
            return 0.0
        return self.config.rtt_ms[ingress][region] / 2000.0


@dataclass
class Queues:
    """Packets waiting to leave, one FIFO per (output, delay): every packet of one FIFO has the same delay,
    so arrival order is departure order and each enqueue/dequeue is O(1)."""

    fifos: dict[tuple[str, float], deque[tuple[float, bytes]]] = field(default_factory=dict)
    queued: int = 0

    def push(self, output: str, delay: float, now: float, packet: bytes) -> None:
        key = (output, delay)
        fifo = self.fifos.get(key)
        if fifo is None:
            fifo = self.fifos[key] = deque()
        fifo.append((now + delay, packet))
        self.queued += 1

    def next_departure(self) -> float | None:
        heads = [fifo[0][0] for fifo in self.fifos.values() if fifo]
        return min(heads) if heads else None

    def due(self, now: float) -> Iterator[tuple[str, bytes]]:
        """Pop every packet whose departure time is at or before `now`."""
        for (output, _), fifo in self.fifos.items():
            while fifo and fifo[0][0] <= now:
                yield output, fifo.popleft()[1]
                self.queued -= 1
