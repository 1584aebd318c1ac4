"""The delay line's core: which delay a packet gets, and the queues (pure)."""

from __future__ import annotations

import ipaddress
import struct

from netns_lab.delaycore import DelayConfig, DelayTable, Queues, destination


def ipv4(src: str, dst: str) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20, 0, 0, 64, 1, 0, ipaddress.IPv4Address(src).packed,
                       ipaddress.IPv4Address(dst).packed)


def ipv6(src: str, dst: str) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, 0, 58, 64, ipaddress.IPv6Address(src).packed,
                       ipaddress.IPv6Address(dst).packed)


CONFIG = DelayConfig.from_json({
    "tuns": {"gru": "dly-gru", "sjc": "dly-sjc"},
    "subnets": [["198.51.100.0/27", "gru"], ["198.51.100.32/27", "sjc"], ["2001:db8:1::/64", "gru"],
                ["2001:db8:2::/64", "sjc"]],
    "rtt_ms": {"gru": {"gru": 1, "sjc": 175}, "sjc": {"gru": 175, "sjc": 1}},
    "anycast_addrs": ["192.0.2.1", "2001:db8:ac::1"],
    "anycast": {"gru": "gru", "sjc": "sjc"},
})


def test_destination_parses_both_families() -> None:
    assert destination(ipv4("198.51.100.2", "198.51.100.34")) == ipaddress.IPv4Address("198.51.100.34")
    assert destination(ipv6("2001:db8:1::2", "2001:db8:2::2")) == ipaddress.IPv6Address("2001:db8:2::2")
    assert destination(b"") is None
    assert destination(b"\x45\x00") is None


def test_half_the_rtt_each_way() -> None:
    table = DelayTable(CONFIG)
    assert table.delay("gru", ipv4("198.51.100.2", "198.51.100.34")) == 0.0875
    assert table.delay("sjc", ipv6("2001:db8:2::2", "2001:db8:1::2")) == 0.0875
    assert table.delay("gru", ipv4("198.51.100.2", "198.51.100.3")) == 0.0005


def test_anycast_follows_the_ingress_regions_choice() -> None:
    table = DelayTable(CONFIG)
    assert table.delay("gru", ipv4("198.51.100.2", "192.0.2.1")) == 0.0005
    moved = DelayConfig.from_json({**CONFIG.to_json(), "anycast": {"gru": "sjc", "sjc": "sjc"}})
    assert DelayTable(moved).delay("gru", ipv6("2001:db8:1::2", "2001:db8:ac::1")) == 0.0875
    withdrawn = DelayConfig.from_json({**CONFIG.to_json(), "anycast": {"gru": None, "sjc": None}})
    assert DelayTable(withdrawn).delay("gru", ipv4("198.51.100.2", "192.0.2.1")) == 0.0


def test_unknown_destination_passes_at_once() -> None:
    assert DelayTable(CONFIG).delay("gru", ipv4("198.51.100.2", "203.0.113.9")) == 0.0


def test_config_round_trips() -> None:
    assert DelayConfig.from_json(CONFIG.to_json()) == CONFIG


def test_queues_release_in_departure_order() -> None:
    q = Queues()
    q.push("gru", 0.1, 0.0, b"slow")
    q.push("gru", 0.01, 0.0, b"fast")
    q.push("sjc", 0.01, 0.005, b"other")
    assert q.next_departure() == 0.01
    assert list(q.due(0.009)) == []
    assert list(q.due(0.011)) == [("gru", b"fast")]
    assert q.next_departure() == 0.015
    assert list(q.due(1.0)) == [("gru", b"slow"), ("sjc", b"other")]
    assert q.queued == 0 and q.next_departure() is None
