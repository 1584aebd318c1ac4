"""The hot path's view of a DNS query: header, question and EDNS0 OPT, parsed by hand (RFC 1035 §4.1).

dnslib builds answers (once per cache entry); it is too slow to run per packet, so queries are read here
with `struct` and byte slicing, and the small fixed-shape replies (FORMERR, REFUSED, NOTIMP, SERVFAIL,
truncated) are written here too.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER = struct.Struct("!HHHHHH")
RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
QR, AA, TC, RD, RA, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0010
#: Header bits copied from the query into every reply: RD (RFC 1035 §4.1.1) and CD (RFC 4035 §3.2.2).
ECHO_BITS = RD | CD
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16  # extended rcode, RFC 6891 §6.1.3
T_A, T_NS, T_SOA, T_TXT, T_AAAA, T_OPT, T_ANY = 1, 2, 6, 16, 28, 41, 255
C_IN, C_ANY = 1, 255
#: The UDP payload size this server advertises and never exceeds (the DNS flag day 2020 value).
DEFAULT_MAX_UDP = 1232


class Drop(Exception):
    """Not worth an answer: too short to hold a header, or a response (QR set; answering could loop)."""


class Reject(Exception):
    """Answer with just this rcode; `question_end` > 12 when the question could be read and is echoed."""

    def __init__(self, rcode: int, question_end: int = 12, edns: Edns | None = None) -> None:
        super().__init__(rcode)
        self.rcode = rcode
        self.question_end = question_end
        self.edns = edns


@dataclass(frozen=True, slots=True)
class Edns:
    udp_size: int
    version: int
    do: bool


@dataclass(frozen=True, slots=True)
class Query:
    id: int
    flags: int
    qname: bytes  # wire form, lowercased (RFC 4343: ASCII case-insensitive; length octets are < 64)
    qtype: int
    qclass: int
    end: int  # offset just past the question
    edns: Edns | None

    @property
    def internal(self) -> bool:
        labels = self.labels()
        return bool(labels) and labels[-1] == b"internal"

    def labels(self) -> tuple[bytes, ...]:
        out: list[bytes] = []
        pos = 0
        while self.qname[pos]:
            size = self.qname[pos]
            out.append(self.qname[pos + 1 : pos + 1 + size])
            pos += size + 1
        return tuple(out)


def _name_end(data: bytes, pos: int, allow_pointer: bool) -> int:
    """Offset just past the (possibly compressed) name at `pos`; Reject(FORMERR) when malformed."""
    total = 0
    size = len(data)
    while True:
        if pos >= size:
            raise Reject(FORMERR)
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            # A pointer ends the name (RFC 1035 §4.1.4); a question has nothing earlier worth pointing at.
            if not allow_pointer or pos + 2 > size:
                raise Reject(FORMERR)
            return pos + 2
        if length & 0xC0:
            raise Reject(FORMERR)  # 0x40/0x80 label types are obsolete (RFC 6891 §5)
        total += length + 1
        if total > 255:
            raise Reject(FORMERR)
        pos += length + 1


def parse(data: bytes) -> Query:
    """Read a query; raises Drop (ignore it) or Reject (answer with that rcode)."""
    if len(data) < 12:
        raise Drop
    qid, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if flags & QR:
        raise Drop
    if (flags >> 11) & 0xF != 0:
        raise Reject(NOTIMP)  # only QUERY (RFC 1035 §4.1.1); NOTIFY, UPDATE, IQUERY are not served
    if qdcount != 1:
        raise Reject(FORMERR)  # RFC 9619: exactly one question
    end = _name_end(data, 12, allow_pointer=False)
    if end + 4 > len(data):
        raise Reject(FORMERR)
    qtype, qclass = struct.unpack_from("!HH", data, end)
    qend = end + 4
    edns = None
    if ancount or nscount or arcount:
        edns = _read_records(data, qend, ancount + nscount, arcount)
    return Query(qid, flags, data[12:end].lower(), qtype, qclass, qend, edns)


def _read_records(data: bytes, pos: int, skip: int, additional: int) -> Edns | None:
    """Walk the other sections for the OPT record (RFC 6891 §6.1.1: at most one, owner root)."""
    edns = None
    for index in range(skip + additional):
        name_start = pos
        pos = _name_end(data, pos, allow_pointer=True)
        if pos + 10 > len(data):
            raise Reject(FORMERR)
        rtype, rclass, ttl, rdlen = RR_FIXED.unpack_from(data, pos)
        pos += 10 + rdlen
        if pos > len(data):
            raise Reject(FORMERR)
        if rtype == T_OPT:
            if index < skip or edns is not None or data[name_start] != 0:
                raise Reject(FORMERR)
            edns = Edns(udp_size=max(512, rclass), version=(ttl >> 16) & 0xFF, do=bool(ttl & 0x8000))
    return edns


def opt_record(rcode: int, do: bool, udp_size: int) -> bytes:
    """Our OPT RR: root owner, our payload size, the upper 8 bits of the rcode, version 0 (RFC 6891 §6.1.3)."""
    ttl = ((rcode >> 4) << 24) | (0x8000 if do else 0)
    return b"\x00" + RR_FIXED.pack(T_OPT, udp_size, ttl, 0)


def reply(data: bytes, rcode: int, question_end: int = 12, edns: Edns | None = None, *, aa: bool = False,
          ra: bool = False, udp_size: int = DEFAULT_MAX_UDP) -> bytes:
    """A reply carrying only an rcode (and the question when it was readable), for REFUSED, FORMERR,..."""
    qid, flags = struct.unpack_from("!HH", data)
    out_flags = QR | (flags & (0x7800 | ECHO_BITS)) | (AA if aa else 0) | (RA if ra else 0) | (rcode & 0xF)
    opt = opt_record(rcode, edns.do, udp_size) if edns is not None else b""
    header = HEADER.pack(qid, out_flags, 1 if question_end > 12 else 0, 0, 0, 1 if opt else 0)
    return header + data[12:question_end] + opt


def truncated(full: bytes, question_end: int, opt: bytes) -> bytes:
    """The UDP reply to an answer too big for the client: header with TC, question, OPT (RFC 2181 §9)."""
    flags = struct.unpack_from("!H", full, 2)[0] | TC
    return HEADER.pack(0, flags, 1, 0, 0, 1 if opt else 0) + full[12:question_end] + opt
