"""Error paths of the core: FORMERR, NOTIMP, REFUSED, SERVFAIL, BADVERS, drops, EDNS0 and truncation."""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from dns6pn import Engine, Forward
from dns6pn.zone import NetworkZone
from tests.dns6pn.world import World


def wire(name: str = "web.internal", rdtype: str = "AAAA", **kw: object) -> bytes:
    return dns.message.make_query(name, rdtype, **kw).to_wire()  # type: ignore[arg-type]


def parse(reply: bytes | Forward | None) -> dns.message.Message:
    assert isinstance(reply, bytes), reply
    return dns.message.from_wire(reply)


def header_only(reply: bytes | Forward | None) -> tuple[int, int, int]:
    """(id, flags, qdcount) of a reply dnspython may refuse to parse as a whole (no question)."""
    assert isinstance(reply, bytes)
    qid, flags, qdcount = struct.unpack_from("!HHH", reply)
    return qid, flags, qdcount


@pytest.fixture
def engine(world: World) -> Engine:
    return Engine(world.catalog.snapshot())


def test_unknown_sources_are_refused_for_everything(world: World, engine: Engine) -> None:
    for source in ("2001:db8::1", "127.0.0.1", "::1", "fdaa:0:ffff::2", "fdaa::1"):
        reply = parse(engine.handle(wire(), source))
        assert reply.rcode() == dns.rcode.REFUSED, source
        assert not reply.answer
    forwarding = Engine(world.catalog.snapshot(), forwarding=True)
    # Never an open resolver: a stranger's outside name is refused, not forwarded.
    assert parse(forwarding.handle(wire("example.com", "A"), "2001:db8::1")).rcode() == dns.rcode.REFUSED


def test_packed_source_addresses_work_like_text(world: World, engine: Engine) -> None:
    import ipaddress

    packed = ipaddress.IPv6Address(world.acme_source).packed
    assert parse(engine.handle(wire(), packed)).answer
    assert parse(engine.handle(wire(), b"\x7f\x00\x00\x01")).rcode() == dns.rcode.REFUSED


def test_outside_names_refused_without_upstream_forwarded_with_one(world: World, engine: Engine) -> None:
    query = wire("example.com", "A")
    assert parse(engine.handle(query, world.acme_source)).rcode() == dns.rcode.REFUSED
    forwarding = Engine(world.catalog.snapshot(), forwarding=True)
    forward = forwarding.handle(query, world.acme_source)
    assert isinstance(forward, Forward) and forward.packet == query
    # `internal` as a label elsewhere is not the zone.
    assert isinstance(forwarding.handle(wire("internal.example.com"), world.acme_source), Forward)
    assert isinstance(forwarding.handle(wire("xinternal"), world.acme_source), Forward)


def test_ra_says_whether_recursion_is_available(world: World, engine: Engine) -> None:
    assert not parse(engine.handle(wire(), world.acme_source)).flags & dns.flags.RA
    forwarding = Engine(world.catalog.snapshot(), forwarding=True)
    assert parse(forwarding.handle(wire(), world.acme_source)).flags & dns.flags.RA


def test_short_packets_and_responses_are_dropped(world: World, engine: Engine) -> None:
    assert engine.handle(b"", world.acme_source) is None
    assert engine.handle(b"\x12\x34\x01", world.acme_source) is None
    response = dns.message.make_response(dns.message.make_query("web.internal", "AAAA")).to_wire()
    assert engine.handle(response, world.acme_source) is None


@pytest.mark.parametrize("packet", [
    b"\x12\x34\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00",  # no question
    b"\x12\x34\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00" + b"\x03web\x00\x00\x1c\x00\x01" * 2,  # two
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03we",  # name cut short
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03web\x00\x00",  # type/class cut short
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x1c\x00\x01",  # pointer in the question
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x40web\x00\x00\x1c\x00\x01",  # bad label type
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x3f" + b"a" * 63 * 5 + b"\x00\x00\x1c\x00\x01",
])
def test_malformed_queries_get_formerr(world: World, engine: Engine, packet: bytes) -> None:
    qid, flags, _ = header_only(engine.handle(packet, world.acme_source))
    assert qid == 0x1234 and flags & 0x8000 and flags & 0xF == dns.rcode.FORMERR


def test_additional_section_errors_get_formerr(world: World, engine: Engine) -> None:
    good = wire(use_edns=0)
    two_opts = bytearray(good[:10] + b"\x00\x02" + good[12:] + good[-11:])
    reply = engine.handle(bytes(two_opts), world.acme_source)
    assert header_only(reply)[1] & 0xF == dns.rcode.FORMERR  # RFC 6891 §6.1.1
    cut = good[:-3]
    assert header_only(engine.handle(cut, world.acme_source))[1] & 0xF == dns.rcode.FORMERR


@pytest.mark.parametrize("opcode", [dns.opcode.IQUERY, dns.opcode.STATUS, dns.opcode.NOTIFY, dns.opcode.UPDATE])
def test_other_opcodes_get_notimp(world: World, engine: Engine, opcode: dns.opcode.Opcode) -> None:
    query = dns.message.make_query("web.internal", "AAAA")
    query.set_opcode(opcode)
    _, flags, _ = header_only(engine.handle(query.to_wire(), world.acme_source))
    assert flags & 0xF == dns.rcode.NOTIMP
    assert (flags >> 11) & 0xF == opcode  # the opcode is echoed


def test_handler_fault_gets_servfail(world: World, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: NetworkZone, labels: tuple[str, ...], region: str | None) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(NetworkZone, "lookup", broken)
    query = dns.message.make_query("web.internal", "AAAA")
    reply = parse(engine.handle(query.to_wire(), world.acme_source))
    assert reply.rcode() == dns.rcode.SERVFAIL and reply.id == query.id
    monkeypatch.undo()
    assert parse(engine.handle(query.to_wire(), world.acme_source)).rcode() == dns.rcode.NOERROR  # not cached


def test_non_in_class_is_refused(world: World, engine: Engine) -> None:
    query = dns.message.make_query("web.internal", "AAAA", rdclass=dns.rdataclass.CH)
    assert parse(engine.handle(query.to_wire(), world.acme_source)).rcode() == dns.rcode.REFUSED


def test_edns_is_echoed_with_our_payload_size_and_do_bit(world: World, engine: Engine) -> None:
    reply = parse(engine.handle(wire(use_edns=0, payload=4096, want_dnssec=True), world.acme_source))
    assert reply.edns == 0 and reply.payload == 1232 and reply.ednsflags & dns.flags.DO
    plain = parse(engine.handle(wire(use_edns=0, payload=4096), world.acme_source))
    assert plain.edns == 0 and not plain.ednsflags & dns.flags.DO
    assert parse(engine.handle(wire(), world.acme_source)).edns == -1  # no OPT without one in the query


def test_edns_version_1_gets_badvers(world: World, engine: Engine) -> None:
    reply = parse(engine.handle(wire(use_edns=1), world.acme_source))
    assert reply.rcode() == dns.rcode.BADVERS and reply.edns == 0


def big_world(world: World, count: int = 60) -> Engine:
    for i in range(count):
        world.catalog.create_machine("db", "worker-gru", f"{0x100 + i:014x}", "started")
    return Engine(world.catalog.snapshot())


def test_udp_truncates_over_the_clients_size_and_tcp_gets_everything(world: World) -> None:
    engine = big_world(world)  # 61 AAAA records: ~1.7 kB
    plain = parse(engine.handle(wire("db.internal"), world.acme_source))
    assert plain.flags & dns.flags.TC and not plain.answer  # over 512 without EDNS (RFC 1035 §4.2.1)
    sized = parse(engine.handle(wire("db.internal", use_edns=0, payload=4096), world.acme_source))
    assert sized.flags & dns.flags.TC and sized.edns == 0  # our cap is 1232 whatever the client says
    full = engine.handle(wire("db.internal"), world.acme_source, tcp=True)
    message = parse(full)
    assert not message.flags & dns.flags.TC and len(message.answer[0]) == 61
    assert isinstance(full, bytes) and len(full) > 1232


def test_answers_that_fit_are_not_truncated(world: World) -> None:
    engine = big_world(world, count=20)  # 21 records: ~600 bytes
    assert parse(engine.handle(wire("db.internal"), world.acme_source)).flags & dns.flags.TC
    fits = parse(engine.handle(wire("db.internal", use_edns=0, payload=1232), world.acme_source))
    assert not fits.flags & dns.flags.TC and len(fits.answer[0]) == 21


def test_rd_and_cd_bits_are_copied(world: World, engine: Engine) -> None:
    query = dns.message.make_query("web.internal", "AAAA")
    query.flags = dns.flags.CD  # no RD
    reply = parse(engine.handle(query.to_wire(), world.acme_source))
    assert reply.flags & dns.flags.CD and not reply.flags & dns.flags.RD
    again = parse(engine.handle(dns.message.make_query("web.internal", "AAAA").to_wire(), world.acme_source))
    assert again.flags & dns.flags.RD and not again.flags & dns.flags.CD


def test_caches_stay_bounded(world: World) -> None:
    engine = Engine(world.catalog.snapshot(), cache_entries=50)
    for i in range(500):
        engine.handle(wire(f"n{i}.internal"), world.acme_source)
    assert sum(len(r.entries) for r in engine.replies.values()) <= 50
    assert sum(len(r.udp) + len(r.tcp) for r in engine.replies.values()) <= 50


def test_a_networks_dns_address_answers_only_that_network(world: World, engine: Engine) -> None:
    acme, globex = world.catalog.network("acme").net_id, world.catalog.network("globex").net_id
    for _ in range(2):  # the second time through the per-packet cache
        assert parse(engine.handle(wire(), world.alice.address, only=acme)).answer
        refused = parse(engine.handle(wire(), world.alice.address, only=globex))
        assert refused.rcode() == dns.rcode.REFUSED and not refused.answer


def test_gateway_listeners_are_restricted_to_their_network(world: World) -> None:
    from dns6pn import DnsServer, ServerConfig

    server = DnsServer(world.catalog, ServerConfig(host="gw-gru", port=0))
    acme = world.catalog.network("acme")
    globex_addr = world.globex.address
    handle = server._handler_for((str(acme.dns_address), 53))
    assert parse(handle(wire(), world.alice.address, False)).answer
    assert parse(handle(wire("api.internal"), globex_addr, False)).rcode() == dns.rcode.REFUSED
    anywhere = server._handler_for(("fdaa::3", 53))
    assert parse(anywhere(wire("api.internal"), globex_addr, False)).answer
