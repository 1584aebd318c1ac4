"""Properties of the core over generated inputs (hypothesis): it never raises, never answers a response,
ignores case, and a reply always carries the query's ID."""

from __future__ import annotations

from collections.abc import Iterator

import dns.message
import dns.name
import dns.rcode
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dns6pn import Engine, Forward
from tests.dns6pn.world import World, build

LABELS = st.sampled_from(["web", "db", "api", "vms", "regions", "all", "gru", "ams", "vm", "process", "of", "nearest",
                          "top1", "top3", "kv", "_metadata", "role", "primary", "_peer", "alice", "_apps", "_api",
                          "_instances", "global", "0000000000000a", "app", "worker", "x"])
TYPES = st.sampled_from(["AAAA", "TXT", "A", "ANY", "SOA", "MX"])
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, Engine]]:
    world = build(tmp_path_factory.mktemp("props") / "state")
    try:
        yield world, Engine(world.catalog.snapshot(), forwarding=True)
    finally:
        world.catalog.close()


@SETTINGS
@given(data=st.binary(max_size=600))
def test_any_bytes_get_bytes_or_nothing(made: tuple[World, Engine], data: bytes) -> None:
    world, engine = made
    for tcp in (False, True):
        reply = engine.handle(data, world.acme_source, tcp)
        assert reply is None or isinstance(reply, bytes | Forward)
        if isinstance(reply, bytes):
            assert reply[:2] == data[:2] and reply[2] & 0x80  # the query's ID, QR set
            if not tcp:
                assert len(reply) <= 1232


@SETTINGS
@given(labels=st.lists(LABELS, min_size=0, max_size=5), rdtype=TYPES, upper=st.lists(st.booleans(), max_size=60))
def test_case_never_changes_the_answer(made: tuple[World, Engine], labels: list[str], rdtype: str,
                                       upper: list[bool]) -> None:
    world, engine = made
    name = ".".join([*labels, "internal"])
    mixed = "".join(c.upper() if i < len(upper) and upper[i] else c for i, c in enumerate(name))
    replies = []
    for text in (name, mixed):
        query = dns.message.make_query(text, rdtype)
        raw = engine.handle(query.to_wire(), world.acme_source, True)
        assert isinstance(raw, bytes)
        reply = dns.message.from_wire(raw)
        assert reply.question[0].name.to_text() == dns.name.from_text(text).to_text()  # the asker's case
        replies.append((reply.rcode(), sorted(rr.to_text().lower() for rr in reply.answer),
                        [rr.to_text().lower() for rr in reply.authority]))
    assert replies[0][0] in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
    assert replies[0] == replies[1]
