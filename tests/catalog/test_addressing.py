"""6PN addressing: layout, parsing, and collisions impossible by construction."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from catalog import addressing
from catalog.errors import InvalidWrite

ids = st.integers(min_value=0, max_value=addressing.MAX_ID)
nonzero_ids = st.integers(min_value=1, max_value=addressing.MAX_ID)


def test_spec_example_splits_into_its_fields() -> None:
    fields = addressing.parse("fdaa:0:5463:a7b:103:cac5:387b:2")
    assert fields.network_id == 0x5463
    assert fields.host_id == 0x0A7B0103
    assert fields.slot_id == 0xCAC5387B
    assert fields.low == 2
    assert str(fields.network) == "fdaa:0:5463::/48"


def test_machine_address_is_2_of_its_112() -> None:
    address = addressing.machine_address(0x5463, 0x0A7B0103, 0xCAC5387B)
    assert str(address) == "fdaa:0:5463:a7b:103:cac5:387b:2"
    assert address in addressing.machine_prefix(0x5463, 0x0A7B0103, 0xCAC5387B)
    assert addressing.machine_prefix(1, 2, 3).prefixlen == 112


def test_dns_addresses() -> None:
    assert str(addressing.DNS_ADDRESS) == "fdaa::3"
    assert str(addressing.network_dns_address(0x5463)) == "fdaa:0:5463::3"


@given(ids, ids, ids)
def test_parse_inverts_machine_address(net: int, host: int, slot: int) -> None:
    fields = addressing.parse(addressing.machine_address(net, host, slot))
    assert (fields.network_id, fields.host_id, fields.slot_id, fields.low) == (net, host, slot, 2)


@given(st.tuples(ids, ids, ids), st.tuples(ids, ids, ids))
def test_distinct_ids_never_share_a_machine_prefix(a: tuple[int, int, int], b: tuple[int, int, int]) -> None:
    if a == b:
        return
    assert not addressing.machine_prefix(*a).overlaps(addressing.machine_prefix(*b))


@given(ids, ids, ids)
def test_machine_space_nests_inside_host_and_network(net: int, host: int, slot: int) -> None:
    machine = addressing.machine_prefix(net, host, slot)
    assert machine.subnet_of(addressing.host_prefix(net, host))
    assert addressing.host_prefix(net, host).subnet_of(addressing.network_prefix(net))


@given(ids, ids, ids)
def test_peer_slash120_stays_inside_its_slot(net: int, host: int, slot: int) -> None:
    peer = addressing.peer_prefix(net, host, slot)
    assert peer.prefixlen == 120
    assert peer.subnet_of(addressing.machine_prefix(net, host, slot))
    assert addressing.peer_address(net, host, slot) in peer
    assert addressing.machine_address(net, host, slot) not in peer


@given(nonzero_ids, ids)
def test_org_networks_never_hold_host_mesh_addresses(net: int, host: int) -> None:
    assert addressing.host_mesh_address(host) not in addressing.network_prefix(net)


@given(ids)
def test_network_id_text_round_trip(net: int) -> None:
    assert addressing.parse_network_id(addressing.format_network_id(net)) == net


@pytest.mark.parametrize("bad", ["2001:db8::1", "not-an-ip", "10.0.0.1"])
def test_parse_refuses_non_6pn(bad: str) -> None:
    with pytest.raises(InvalidWrite):
        addressing.parse(bad)


def test_ids_out_of_range_are_refused() -> None:
    with pytest.raises(InvalidWrite):
        addressing.machine_address(addressing.MAX_ID + 1, 0, 0)
    with pytest.raises(InvalidWrite):
        addressing.parse_network_id("1:10000")


def test_format_network_id_matches_docs() -> None:
    assert addressing.format_network_id(0x5463) == "0:5463"
    assert ipaddress.IPv6Address("fdaa:0:5463::3") == addressing.network_dns_address(0x5463)
