"""Every name form of specs/internal-dns.md through the pure core, answers parsed with dnspython."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from catalog import Catalog
from dns6pn import Engine
from tests.dns6pn.world import World


def ask(
    engine: Engine, name: str, rdtype: str = "AAAA", source: str | None = None, **kw: object
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    reply = engine.handle(query.to_wire(), source or "fdaa::1", False)
    assert isinstance(reply, bytes), reply
    message = dns.message.from_wire(reply)
    assert message.id == query.id
    return message


def addresses(message: dns.message.Message) -> set[str]:
    return {r.address for rrset in message.answer if rrset.rdtype == dns.rdatatype.AAAA for r in rrset}


def txt(message: dns.message.Message) -> list[str]:
    """Each TXT record's character-strings joined, the way clients read them."""
    return [b"".join(r.strings).decode() for rrset in message.answer for r in rrset]


def engine_for(world: World, **kw: object) -> tuple[Engine, str]:
    return Engine(world.catalog.snapshot(), **kw), world.acme_source  # type: ignore[arg-type]


def test_app_name_lists_started_visible_machines(world: World) -> None:
    engine, src = engine_for(world)
    reply = ask(engine, "web.internal", source=src)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert addresses(reply) == {world.web_gru.address, world.web_ams.address, world.web_sjc.address}
    assert addresses(ask(engine, "global.web.internal", source=src)) == addresses(reply)


def test_region_process_vm_and_metadata_names(world: World) -> None:
    engine, src = engine_for(world)
    assert addresses(ask(engine, "gru.web.internal", source=src)) == {world.web_gru.address}
    assert addresses(ask(engine, "ams.web.internal", source=src)) == {world.web_ams.address}
    assert addresses(ask(engine, "worker.process.web.internal", source=src)) == {world.web_ams.address}
    assert addresses(ask(engine, "app.process.web.internal", source=src)) == {
        world.web_gru.address, world.web_sjc.address}
    vm = ask(engine, f"{world.web_sjc.id}.vm.web.internal", source=src)
    assert addresses(vm) == {world.web_sjc.address}
    assert addresses(ask(engine, "primary.role.kv._metadata.web.internal", source=src)) == {world.web_gru.address}


def test_region_without_machines_is_nodata(world: World) -> None:
    engine, src = engine_for(world)
    reply = ask(engine, "syd.web.internal", source=src)
    assert reply.rcode() == dns.rcode.NOERROR and not reply.answer
    assert reply.authority[0].rdtype == dns.rdatatype.SOA


def test_stopped_machine_vm_name_is_nodata_not_nxdomain(world: World) -> None:
    engine, src = engine_for(world)
    reply = ask(engine, f"{world.web_stopped.id}.vm.web.internal", source=src)
    assert reply.rcode() == dns.rcode.NOERROR and not reply.answer
    missing = ask(engine, "ffffffffffffff.vm.web.internal", source=src)
    assert missing.rcode() == dns.rcode.NXDOMAIN


def test_nearest_orders_by_rtt_from_the_querying_hosts_region(world: World) -> None:
    engine, _ = engine_for(world)
    # From a gru machine, the nearest web machine is in gru; from an ams one, in ams.
    assert addresses(ask(engine, "top1.nearest.of.web.internal", source=world.web_gru.address)) == {
        world.web_gru.address}
    assert addresses(ask(engine, "top1.nearest.of.web.internal", source=world.db.address)) == {
        world.web_ams.address}
    assert len(addresses(ask(engine, "top2.nearest.of.web.internal", source=world.db.address))) == 2
    assert len(addresses(ask(engine, "top99.nearest.of.web.internal", source=world.db.address))) == 3
    assert ask(engine, "top0.nearest.of.web.internal", source=world.db.address).rcode() == dns.rcode.NXDOMAIN
    assert ask(engine, "topx.nearest.of.web.internal", source=world.db.address).rcode() == dns.rcode.NXDOMAIN


def test_nearest_from_a_laptop_uses_its_gateways_region(world: World) -> None:
    engine, _ = engine_for(world)
    reply = ask(engine, "top1.nearest.of.web.internal", source=world.alice.address)
    assert addresses(reply) == {world.web_gru.address}


def test_txt_names(world: World) -> None:
    engine, src = engine_for(world)
    vms = txt(ask(engine, "vms.web.internal", "TXT", source=src))
    assert vms == [f"{world.web_gru.id} gru,{world.web_ams.id} ams,{world.web_sjc.id} sjc"]
    all_vms = txt(ask(engine, "all.vms.web.internal", "TXT", source=src))[0].split(",")
    assert f"{world.web_stopped.id} gru" in all_vms and len(all_vms) == 4
    assert txt(ask(engine, "regions.web.internal", "TXT", source=src)) == ["ams,gru,sjc"]
    assert txt(ask(engine, "all.regions.web.internal", "TXT", source=src)) == ["ams,gru,sjc"]
    assert txt(ask(engine, "_apps.internal", "TXT", source=src)) == ["db,web"]
    assert txt(ask(engine, "_peer.internal", "TXT", source=src)) == ["alice"]
    instances = txt(ask(engine, "_instances.internal", "TXT", source=src))[0].split(";")
    assert f"instance={world.db.id},app=db,ip={world.db.address},region=ams" in instances
    assert len(instances) == 4  # db + three started web machines; not the stopped or skip_dns ones
    assert len(txt(ask(engine, "all._instances.internal", "TXT", source=src))[0].split(";")) == 5


def test_peer_and_api_names(world: World) -> None:
    engine, src = engine_for(world)
    assert addresses(ask(engine, "alice._peer.internal", source=src)) == {world.alice.address}
    assert addresses(ask(engine, "ALICE._peer.internal", source=src)) == {world.alice.address}
    assert addresses(ask(engine, "interactive-x1._peer.internal", source=src)) == {world.interactive.address}
    net = world.catalog.network("acme")
    assert addresses(ask(engine, "_api.internal", source=src)) == {str(net.dns_address)}


def test_skip_dns_machines_are_never_listed(world: World) -> None:
    engine, src = engine_for(world)
    console = world.web_console
    assert console.address not in addresses(ask(engine, "web.internal", source=src))
    assert ask(engine, f"{console.id}.vm.web.internal", source=src).rcode() == dns.rcode.NXDOMAIN
    assert console.id not in txt(ask(engine, "all.vms.web.internal", "TXT", source=src))[0]


def test_nodata_vs_nxdomain_carry_the_soa(world: World) -> None:
    engine, src = engine_for(world, ttl=7)
    nodata = ask(engine, "web.internal", "A", source=src)
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    nxdomain = ask(engine, "nosuchapp.internal", source=src)
    assert nxdomain.rcode() == dns.rcode.NXDOMAIN
    for reply in (nodata, nxdomain):
        (soa,) = reply.authority
        assert soa.rdtype == dns.rdatatype.SOA and str(soa.name) == "internal."
        assert soa.ttl == 7 and soa[0].minimum == 7  # RFC 2308 §5: negative TTL from the SOA
    # TXT asked of an AAAA name, and AAAA of a TXT name: NODATA.
    assert ask(engine, "web.internal", "TXT", source=src).rcode() == dns.rcode.NOERROR
    assert not ask(engine, "_apps.internal", "AAAA", source=src).answer


def test_empty_non_terminals_exist(world: World) -> None:
    engine, src = engine_for(world)
    for name in ("vm.web.internal", "process.web.internal", "nearest.of.web.internal", "kv._metadata.web.internal",
                 "role.kv._metadata.web.internal", "internal"):
        reply = ask(engine, name, source=src)
        assert reply.rcode() == dns.rcode.NOERROR and not reply.answer, name
    assert ask(engine, "other.kv._metadata.web.internal", source=src).rcode() == dns.rcode.NXDOMAIN
    assert ask(engine, "x.y.web.internal", source=src).rcode() == dns.rcode.NXDOMAIN


def test_apex_soa(world: World) -> None:
    engine, src = engine_for(world)
    reply = ask(engine, "internal", "SOA", source=src)
    assert reply.answer[0].rdtype == dns.rdatatype.SOA


def test_ttl_is_configurable(world: World) -> None:
    engine, src = engine_for(world, ttl=30)
    reply = ask(engine, "web.internal", source=src)
    assert {rrset.ttl for rrset in reply.answer} == {30}


def test_case_is_echoed_and_does_not_matter(world: World) -> None:
    engine, src = engine_for(world)
    lower = ask(engine, "web.internal", source=src)
    mixed = ask(engine, "WeB.InTeRnAl", source=src)  # same cache entry, the asker's case
    assert addresses(mixed) == addresses(lower)
    assert mixed.question[0].name.to_text() == "WeB.InTeRnAl."
    assert mixed.answer[0].name.to_text() == "WeB.InTeRnAl."
    assert txt(ask(engine, "VMS.web.INTERNAL", "TXT", source=src)) == txt(ask(engine, "vms.web.internal", "TXT",
                                                                               source=src))


def test_any_returns_every_type_the_name_owns(world: World) -> None:
    engine, src = engine_for(world)
    assert len(addresses(ask(engine, "web.internal", "ANY", source=src))) == 3


def test_scoped_by_the_sources_network(world: World) -> None:
    engine, _ = engine_for(world)
    from_globex = world.globex.address
    assert addresses(ask(engine, "api.internal", source=from_globex)) == {world.globex.address}
    assert ask(engine, "web.internal", source=from_globex).rcode() == dns.rcode.NXDOMAIN
    assert ask(engine, "alice._peer.internal", source=from_globex).rcode() == dns.rcode.NXDOMAIN
    assert txt(ask(engine, "_apps.internal", "TXT", source=from_globex)) == ["api"]
    assert ask(engine, "api.internal", source=world.acme_source).rcode() == dns.rcode.NXDOMAIN
    # A laptop peer sees its org's network like a machine does.
    assert addresses(ask(engine, "db.internal", source=world.alice.address)) == {world.db.address}


def test_txt_longer_than_255_bytes_is_split(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    cat = Catalog(tmp_path / "s")
    try:
        cat.create_org("acme")
        cat.register_host("worker-gru", "gru", "worker", "192.0.2.1")
        cat.create_app("big", "acme")
        made = [cat.create_machine("big", "worker-gru", f"{i:014x}", "started") for i in range(40)]
        engine = Engine(cat.snapshot())
        reply = ask(engine, "vms.big.internal", "TXT", source=made[0].address, use_edns=0, payload=4096)
        (rrset,) = reply.answer
        (record,) = rrset
        assert len(record.strings) > 1 and all(len(s) <= 255 for s in record.strings)
        assert max(len(s) for s in record.strings) == 255
        assert b"".join(record.strings).decode() == ",".join(f"{m.id} gru" for m in made)
    finally:
        cat.close()


def test_catalog_change_invalidates_cached_answers(world: World) -> None:
    from catalog import Follower

    follower = Follower(world.catalog)
    engine = Engine(follower.state)
    src = world.acme_source
    assert world.web_sjc.address in addresses(ask(engine, "web.internal", source=src))
    world.catalog.set_machine_state(world.web_sjc.id, "stopped")
    assert follower.poll()
    engine.update(follower.state)
    assert world.web_sjc.address not in addresses(ask(engine, "web.internal", source=src))
    moved = world.catalog.move_machine(world.web_gru.id, "worker-ams")
    follower.poll()
    engine.update(follower.state)
    reply = ask(engine, f"{moved.id}.vm.web.internal", source=world.db.address)
    assert addresses(reply) == {moved.address} and moved.address != world.web_gru.address


def test_changes_invalidate_only_the_networks_they_touch(world: World) -> None:
    from catalog import Follower

    follower = Follower(world.catalog)
    engine = Engine(follower.state)
    acme_src, globex_src = world.acme_source, world.globex.address
    ask(engine, "web.internal", source=acme_src)
    ask(engine, "api.internal", source=globex_src)

    def cached(source: str) -> int:
        scope = engine.scope_of(source)
        return sum(len(r.entries) for s, r in engine.replies.items() if s == scope)

    assert cached(acme_src) and cached(globex_src)
    world.catalog.set_machine_state(world.web_ams.id, "stopped")
    changes = follower.poll()
    engine.update(follower.state, changes)
    assert cached(globex_src) and not cached(acme_src)
    assert world.web_ams.address not in addresses(ask(engine, "web.internal", source=acme_src))
    peer = world.catalog.create_peer("globex", "bob", "gw-gru", "C" * 43 + "=")
    engine.update(follower.state, follower.poll())
    assert cached(acme_src) and not cached(globex_src)
    assert addresses(ask(engine, "bob._peer.internal", source=globex_src)) == {peer.address}
    world.catalog.register_host("worker-syd", "syd", "worker", "192.0.2.20")  # a host: everything goes
    engine.update(follower.state, follower.poll())
    assert not engine.replies
