"""Hand-made IPv6 packets for the isolation tests: an attacker's tools, independent of wgmesh.

`send` writes whole IPv6 packets (any source) through an IPPROTO_RAW socket; `sniff` reads every frame of
one interface through an AF_PACKET socket (both directions) and reports the IPv6 ones. Run inside a
namespace as a module, so a test can attack from any node:

    ip netns exec NS python -m tests.wgmesh.rawpkt send udp SRC DST DPORT [PAYLOAD]
    ip netns exec NS python -m tests.wgmesh.rawpkt send syn SRC DST DPORT
    ip netns exec NS python -m tests.wgmesh.rawpkt send echo SRC DST
    ip netns exec NS python -m tests.wgmesh.rawpkt send dns SRC DST NAME   # an AAAA query to port 53
    ip netns exec NS python -m tests.wgmesh.rawpkt send ptb SRC DST MTU QSRC QDST QSPORT QDPORT   # quoting UDP
    ip netns exec NS python -m tests.wgmesh.rawpkt sniff IFACE SECONDS   # "ready", then JSON lines: src, dst, ...
    ip netns exec NS python -m tests.wgmesh.rawpkt recv ADDRESS PORT SECONDS   # "ready", then UDP payloads

Checksums follow RFC 8200 §8.1 (the upper-layer pseudo-header).
"""

from __future__ import annotations

import ipaddress
import json
import select
import socket
import struct
import sys
import time

UDP, TCP, ICMP6 = 17, 6, 58
ETH_P_ALL, ETH_P_IPV6 = 0x0003, 0x86DD


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _addr(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def ipv6(src: str, dst: str, nh: int, payload: bytes, hop_limit: int = 64) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nh, hop_limit, _addr(src), _addr(dst)) + payload


def _with_checksum(src: str, dst: str, nh: int, segment: bytes, offset: int) -> bytes:
    pseudo = _addr(src) + _addr(dst) + struct.pack("!I3xB", len(segment), nh)
    value = checksum(pseudo + segment)
    return segment[:offset] + struct.pack("!H", value) + segment[offset + 2:]


def udp(src: str, dst: str, sport: int, dport: int, data: bytes) -> bytes:
    segment = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    return ipv6(src, dst, UDP, _with_checksum(src, dst, UDP, segment, 6))


def syn(src: str, dst: str, sport: int, dport: int, seq: int = 1) -> bytes:
    segment = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    return ipv6(src, dst, TCP, _with_checksum(src, dst, TCP, segment, 16))


def echo(src: str, dst: str, ident: int = 0x5150, seq: int = 1) -> bytes:
    message = struct.pack("!BBHHH", 128, 0, 0, ident, seq) + b"sixpn-isolation"
    return ipv6(src, dst, ICMP6, _with_checksum(src, dst, ICMP6, message, 2))


def packet_too_big(src: str, dst: str, mtu: int, quoted: bytes) -> bytes:
    """ICMPv6 Packet Too Big (RFC 4443 §3.2) quoting `quoted`, the start of a packet `dst` sent."""
    message = struct.pack("!BBHI", 2, 0, 0, mtu) + quoted[:1232]
    return ipv6(src, dst, ICMP6, _with_checksum(src, dst, ICMP6, message, 2))


def send(packet: bytes) -> None:
    dst = str(ipaddress.IPv6Address(packet[24:40]))
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
        sock.sendto(packet, (dst, 0))


def parse(frame: bytes) -> dict[str, object] | None:
    """An IPv6 packet of an Ethernet frame (or of a raw IP frame, as on a TUN), or None."""
    if len(frame) >= 54 and struct.unpack("!H", frame[12:14])[0] == ETH_P_IPV6:
        packet = frame[14:]
    elif frame[:1] and frame[0] >> 4 == 6:
        packet = frame
    else:
        return None
    if len(packet) < 40:
        return None
    nh = packet[6]
    out: dict[str, object] = {"src": str(ipaddress.IPv6Address(packet[8:24])),
                              "dst": str(ipaddress.IPv6Address(packet[24:40])), "nh": nh}
    body = packet[40:]
    if nh in (TCP, UDP) and len(body) >= 4:
        out["sport"], out["dport"] = struct.unpack("!HH", body[:4])
    if nh == TCP and len(body) >= 14:
        out["flags"] = body[13]
    if nh == ICMP6 and body:
        out["type"] = body[0]
    return out


def sniff(iface: str, seconds: float) -> list[dict[str, object]]:
    seen: list[dict[str, object]] = []
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as sock:
        sock.bind((iface, 0))
        print("ready", flush=True)
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if select.select([sock], [], [], left)[0]:
                frame, meta = sock.recvfrom(65535)
                packet = parse(frame)
                if packet is not None:
                    packet["outgoing"] = meta[2] == socket.PACKET_OUTGOING
                    seen.append(packet)
    return seen


def receive(address: str, port: int, seconds: float) -> list[str]:
    got: list[str] = []
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        print("ready", flush=True)
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if select.select([sock], [], [], left)[0]:
                data, peer = sock.recvfrom(65535)
                got.append(f"{peer[0]} {data.decode(errors='replace')}")
    return got


def main(argv: list[str]) -> int:
    if argv[:1] == ["sniff"]:
        for seen in sniff(argv[1], float(argv[2])):
            print(json.dumps(seen))
        return 0
    if argv[:1] == ["recv"]:
        for line in receive(argv[1], int(argv[2]), float(argv[3])):
            print(line, flush=True)
        return 0
    kind, src, dst, *rest = argv[1:]
    if kind == "udp":
        packet = udp(src, dst, 40000, int(rest[0]), (rest[1] if len(rest) > 1 else "spoofed").encode())
    elif kind == "syn":
        packet = syn(src, dst, 40001, int(rest[0]))
    elif kind == "dns":  # a DNS query (RFC 1035 §4.1) for NAME AAAA, to port 53
        name = b"".join(bytes([len(label)]) + label.encode() for label in rest[0].rstrip(".").split("."))
        packet = udp(src, dst, 40053, 53, struct.pack("!6H", 1, 0x0100, 1, 0, 0, 0) + name + b"\0\0\x1c\0\x01")
    elif kind == "echo":
        packet = echo(src, dst)
    elif kind == "ptb":  # quoting a UDP datagram QSRC:QSPORT -> QDST:QDPORT of 1,400 bytes
        mtu, qsrc, qdst, qsport, qdport = int(rest[0]), rest[1], rest[2], int(rest[3]), int(rest[4])
        quoted = udp(qsrc, qdst, qsport, qdport, b"x" * 1400)
        packet = packet_too_big(src, dst, mtu, quoted)
    else:
        raise SystemExit(f"unknown packet kind {kind!r}")
    send(packet)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
