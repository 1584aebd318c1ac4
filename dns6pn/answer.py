"""From a looked-up `Node` to a wire answer: rcode choice (RFC 2308 NXDOMAIN / NODATA with SOA) and
encoding with dnslib. Runs once per cache entry, never per packet.
"""

from __future__ import annotations

from dataclasses import dataclass

from dnslib import AAAA, QTYPE, RR, SOA, TXT, DNSHeader, DNSLabel, DNSQuestion, DNSRecord

from dns6pn import wire
from dns6pn.zone import Node

TXT_CHUNK = 255  # one character-string holds at most 255 bytes (RFC 1035 §3.3); clients join them
SOA_TIMERS = (3600, 600, 86400)  # refresh, retry, expire: no secondaries pull this zone; plausible values


@dataclass(frozen=True)
class Answer:
    """What to say: the rcode, the answer records and whether an SOA goes in authority."""

    rcode: int
    aaaa: tuple[str, ...] = ()
    txt: str | None = None
    soa_answer: bool = False  # SOA asked at the apex: the SOA is the answer
    soa_authority: bool = False  # NXDOMAIN or NODATA: the SOA is the negative-caching hint (RFC 2308 §3)


def choose(node: Node | None, qtype: int, apex: bool) -> Answer:
    """RFC 1034 §4.3.2 for one zone without delegations or CNAMEs."""
    if node is None:
        return Answer(wire.NXDOMAIN, soa_authority=True)
    if apex and qtype in (wire.T_SOA, wire.T_ANY):
        return Answer(wire.NOERROR, soa_answer=True)
    aaaa = node.aaaa if qtype in (wire.T_AAAA, wire.T_ANY) else ()
    txt = node.txt if qtype in (wire.T_TXT, wire.T_ANY) else None
    if not aaaa and txt is None:
        return Answer(wire.NOERROR, soa_authority=True)  # NODATA; `.internal` has no A records at all
    return Answer(wire.NOERROR, aaaa=aaaa, txt=txt)


def split_txt(value: str) -> list[bytes]:
    data = value.encode()
    return [data[i : i + TXT_CHUNK] for i in range(0, len(data), TXT_CHUNK)] or [b""]


def encode(query: wire.Query, answer: Answer, *, ttl: int, serial: int, ra: bool, udp_size: int) -> bytes:
    """The full reply with ID 0 and RD/CD clear (the per-query bits are patched in by the caller).

    Every name is written in lowercase and owner names compress to the question (RFC 1035 §4.1.4), so
    copying the asker's question bytes over ours makes the answer echo its case.
    """
    labels = query.labels()
    qname = DNSLabel(list(labels))
    apex = DNSLabel(list(labels[-1:]))  # `internal.`, pointing into the question
    header = DNSHeader(id=0, qr=1, aa=1, rd=0, ra=1 if ra else 0, rcode=answer.rcode & 0xF)
    record = DNSRecord(header, q=DNSQuestion(qname, query.qtype, query.qclass))
    for address in answer.aaaa:
        record.add_answer(RR(qname, QTYPE.AAAA, wire.C_IN, ttl, AAAA(address)))
    if answer.txt is not None:
        record.add_answer(RR(qname, QTYPE.TXT, wire.C_IN, ttl, TXT(split_txt(answer.txt))))
    if answer.soa_answer or answer.soa_authority:
        soa = RR(apex, QTYPE.SOA, wire.C_IN, ttl, SOA(
            apex.add("ns"), apex.add("hostmaster"), (serial & 0xFFFFFFFF, *SOA_TIMERS, ttl),
        ))
        if answer.soa_answer:
            record.add_answer(soa)
        else:
            record.add_auth(soa)
    packed: bytes = record.pack()
    if query.edns is not None:
        packed = _with_opt(packed, wire.opt_record(answer.rcode, query.edns.do, udp_size))
    return packed


def _with_opt(packed: bytes, opt: bytes) -> bytes:
    arcount = int.from_bytes(packed[10:12], "big") + 1
    return packed[:10] + arcount.to_bytes(2, "big") + packed[12:] + opt
