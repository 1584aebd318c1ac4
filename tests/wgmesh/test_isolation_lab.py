"""Attacks on the packet isolation (issue 15), tried in the shared three-region lab with raw sockets.

The attacker's tools are `tests/wgmesh/rawpkt.py` (hand-made IPv6 packets with any source, and an AF_PACKET
sniffer); what reached a machine or left a host is checked with sockets in the victims' namespaces, the
sniffer on the hosts' underlay interface and `ip -6 route get`. sixpn is only used to set things up.

- A host on the underlay (client-gru, on gru's bridge) routes fdaa::/16 to a worker or the gateway and sends
  6PN packets: they must not reach a machine, the gateway's DNS or a laptop's tunnel, and no 6PN reply may
  leave the host unencrypted.
- A globex machine forges an ICMPv6 Packet Too Big about an acme flow: acme's path MTU must not change.
- A machine spoofs a non-6PN source towards the anycast address: the edge must never see it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from catalog import Machine
from netns_lab.lab import Lab
from tests.conftest import app_maker

pytestmark = pytest.mark.lab
WEB = {"http_service": {"internal_port": 8080}}
RAWPKT = str(Path(__file__).with_name("rawpkt.py"))
ATTACKER = "client-gru"
ANYCAST6 = "2001:db8:ac::1"
SNIFF_SECONDS = "2.5"


@dataclass
class World:
    lab: Lab
    a: Machine  # acme, gru
    b: Machine  # acme, sjc
    g: Machine  # globex, gru

    def raw(self, node: str, *argv: str) -> None:
        self.lab.exec(node, [sys.executable, RAWPKT, *argv], check=True)

    def spoofed(self, machine: Machine) -> str:
        """An address of the machine's network that belongs to nobody (the issue's `fdaa:0:1:ffff::1`)."""
        net = ipaddress.IPv6Network((machine.address, 48), strict=False)
        return str(net.network_address + (0xFFFF << 64) + 1)

    def underlay6(self, node: str) -> str:
        return str(self.lab.plan.node(node).v6)

    def counter(self, node: str, comment: str, exists: bool = True) -> int:
        """Packets dropped by the rule with this comment (0 if there is none and `exists` is False)."""
        table = self.lab.exec(node, ["nft", "list", "table", "inet", "sixpn"], check=True).stdout
        found = re.search(rf"counter packets (\d+) bytes \d+ drop comment \"{re.escape(comment)}\"", table)
        assert found is not None or not exists, f"no counter {comment!r} on {node}"
        return int(found.group(1)) if found else 0


class Background:
    """A rawpkt `sniff` or `recv` in a namespace, started and ready before the test sends anything."""

    def __init__(self, lab: Lab, node: str, *argv: str) -> None:
        self.proc = subprocess.Popen(lab.exec_argv(node, [sys.executable, RAWPKT, *argv]), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        assert first.strip() == "ready", (first, self.proc.stderr.read() if self.proc.stderr else "")

    def lines(self) -> list[str]:
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        return out.splitlines()

    def packets(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines()]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def sixpn_packets(packets: list[dict[str, object]], outgoing: bool) -> list[dict[str, object]]:
    space = ipaddress.IPv6Network("fdaa::/16")
    return [p for p in packets if p["outgoing"] is outgoing
            and (ipaddress.IPv6Address(str(p["src"])) in space or ipaddress.IPv6Address(str(p["dst"])) in space)]


def pinged(lab: Lab, node: str, address: str, count: int = 1) -> bool:
    return lab.exec(node, ["ping", "-n", "-q", "-c", str(count), "-i", "0.3", "-W", "2", address]).returncode == 0


@pytest.fixture(scope="module")
def world(lab: Lab) -> Iterator[World]:
    with app_maker(lab) as make:
        (a,) = make("iso-a", "acme", 1, ["gru"], WEB)
        (b,) = make("iso-b", "acme", 1, ["sjc"], WEB)
        (g,) = make("iso-g", "globex", 1, ["gru"], WEB)
        assert a.host == g.host
        deadline = time.monotonic() + 30
        while not pinged(lab, a.id, b.address):  # the mesh carries acme's traffic: a control for every test
            assert time.monotonic() < deadline, "acme machines in gru and sjc cannot reach each other"
        yield World(lab, a, b, g)


@contextmanager
def attacker_routes(world: World, via_node: str, *prefixes: str) -> Iterator[None]:
    """The attacker's own routing: 6PN destinations via a host's underlay address, as in the issue."""
    via = world.underlay6(via_node)
    for prefix in prefixes:
        world.lab.exec(ATTACKER, ["ip", "-6", "route", "replace", prefix, "via", via], check=True)
    try:
        yield
    finally:
        for prefix in prefixes:
            world.lab.exec(ATTACKER, ["ip", "-6", "route", "del", prefix, "via", via])


def test_underlay_cannot_inject_6pn_into_a_machine(world: World) -> None:
    """Raw UDP to a machine's socket, a SYN to its app, an echo: from a spoofed source of the victim's
    own network, from a real acme machine's address elsewhere, and from the attacker's own address."""
    lab, a = world.lab, world.a
    comments = ("6PN source from the underlay", "to 6PN from the underlay")
    before = sum(world.counter(a.host, c, exists=False) for c in comments)
    listener = Background(lab, a.id, "recv", "::", "5555", SNIFF_SECONDS)
    sniffer = Background(lab, a.host, "sniff", "eth0", SNIFF_SECONDS)
    try:
        with attacker_routes(world, a.host, "fdaa::/16"):
            for src in (world.spoofed(a), world.b.address, world.underlay6(ATTACKER)):
                world.raw(ATTACKER, "send", "udp", src, a.address, "5555", "from-the-underlay")
                world.raw(ATTACKER, "send", "syn", src, a.address, "8080")
                world.raw(ATTACKER, "send", "echo", src, a.address)
        received, seen = listener.lines(), sniffer.packets()
    finally:
        listener.kill()
        sniffer.kill()
    assert len([p for p in seen if p["dst"] == a.address and not p["outgoing"]]) == 9  # they did arrive
    assert received == []
    assert sixpn_packets(seen, outgoing=True) == []  # no SYN-ACK, no echo reply onto the underlay
    assert sum(world.counter(a.host, c) for c in comments) >= before + 9
    assert pinged(lab, a.id, world.b.address)


def test_host_sends_no_6pn_onto_the_underlay(world: World) -> None:
    """A host's own packet to a 6PN address without a mesh route would follow the underlay's default
    route; it is refused instead (ping gets EPERM), and nothing appears on the wire."""
    lab, a = world.lab, world.a
    sniffer = Background(lab, a.host, "sniff", "eth0", "1.5")
    try:
        done = lab.exec(a.host, ["ping", "-n", "-c", "1", "-W", "1", world.spoofed(a)])
        seen = sniffer.packets()
    finally:
        sniffer.kill()
    assert done.returncode != 0
    assert sixpn_packets(seen, outgoing=True) == []
    assert pinged(lab, a.host, a.address)  # its own machine, over the veth


@pytest.fixture
def laptop_up(world: World, tmp_path: Path) -> Iterator[str]:
    """alice's laptop joined to acme through gw-gru with stock wg-quick; yields its tunnel address."""
    lab = world.lab
    etc = Path("/etc/netns") / lab.netns_of("laptop-alice")
    made = not (etc / "resolv.conf").exists()
    if made:
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text("# laptop-alice\n")
    name = f"iso{os.getpid() % 10000}"
    conf = tmp_path / f"{lab.lab_id}i{os.getpid() % 10000}.conf"
    sixpn = [sys.executable, "-m", "sixpn.cli", "--state", str(lab.state_dir)]
    subprocess.run([*sixpn, "wg", "create", "acme", "gru", name, str(conf)], check=True, capture_output=True,
                   timeout=60)
    try:
        assert lab.exec("laptop-alice", ["wg-quick", "up", str(conf)]).returncode == 0
        found = re.search(r"Address = ([0-9a-f:]+)/120", conf.read_text())
        assert found is not None
        yield found.group(1)
    finally:
        lab.exec("laptop-alice", ["wg-quick", "down", str(conf)])
        subprocess.run([*sixpn, "wg", "remove", "acme", name], capture_output=True, timeout=60)
        if made:
            (etc / "resolv.conf").unlink(missing_ok=True)


def test_underlay_cannot_reach_gateway_dns_or_a_laptop(world: World, laptop_up: str) -> None:
    lab = world.lab
    dns = str(ipaddress.IPv6Network((world.a.address, 48), strict=False).network_address + 3)
    assert lab.exec("laptop-alice", ["dig", "+short", "+time=2", "aaaa", "iso-a.internal"]).stdout.strip() \
        == world.a.address  # the laptop itself is served: a control
    listener = Background(lab, "laptop-alice", "recv", laptop_up, "7777", SNIFF_SECONDS)
    sniffer = Background(lab, "gw-gru", "sniff", "eth0", SNIFF_SECONDS)
    try:
        with attacker_routes(world, "gw-gru", "fdaa::/16"):
            world.raw(ATTACKER, "send", "udp", world.spoofed(world.a), laptop_up, "7777", "into-the-tunnel")
            world.raw(ATTACKER, "send", "dns", world.spoofed(world.a), dns, "_instances.internal")
        received, seen = listener.lines(), sniffer.packets()
    finally:
        listener.kill()
        sniffer.kill()
    assert {p["dst"] for p in seen if not p["outgoing"]} >= {dns, laptop_up}  # they did arrive at the gateway
    assert received == []
    assert sixpn_packets(seen, outgoing=True) == []  # no DNS answer onto the underlay
    assert pinged(lab, "laptop-alice", world.a.address)


def route_mtu(world: World, machine: Machine, dst: str) -> str:
    out = world.lab.exec(machine.id, ["ip", "-6", "route", "get", dst], check=True).stdout
    found = re.search(r" mtu (\d+)", out)
    return found.group(1) if found else "-"


def test_forged_packet_too_big_from_another_network_is_dropped(world: World) -> None:
    """A UDP flow acme(gru) -> acme(sjc) is in the gru worker's conntrack; a globex machine on the same
    worker sends Packet Too Big quoting it; the acme machine sends one to globex quoting it. Then, as a
    control, acme's own peer sends the first one again."""
    a, b, g = world.a, world.b, world.g
    flow = subprocess.Popen(world.lab.exec_argv(a.id, [sys.executable, "-c", _UDP_FLOW, b.address]),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert flow.stdout is not None
        port = flow.stdout.readline().strip()
        assert port.isdigit()
        assert route_mtu(world, a, b.address) == "-"
        before = world.counter(a.host, "related from another network", exists=False)
        world.raw(g.id, "send", "ptb", g.address, a.address, "1280", a.address, b.address, port, "5353")
        deadline = time.monotonic() + 5
        while (world.counter(a.host, "related from another network", exists=False) == before
               and route_mtu(world, a, b.address) == "-"):
            assert time.monotonic() < deadline, "the forged Packet Too Big neither dropped nor delivered"
        assert route_mtu(world, a, b.address) == "-", "a globex machine set acme's path MTU"
        assert world.counter(a.host, "related from another network") == before + 1  # dropped at the worker
        # The other way round: an acme machine cannot reach globex with an error quoting its own network's
        # flow (the kernel does not call an error related unless it goes to the flow's endpoint).
        sniffer = Background(world.lab, g.id, "sniff", "eth0", "1.5")
        try:
            world.raw(a.id, "send", "ptb", a.address, g.address, "1280", a.address, b.address, port, "5353")
            seen = sniffer.packets()
        finally:
            sniffer.kill()
        assert [p for p in seen if p["src"] == a.address] == []
        # The same error from inside acme's network is honoured: the flow and the quote were right.
        world.raw(b.id, "send", "ptb", b.address, a.address, "1280", a.address, b.address, port, "5353")
        deadline = time.monotonic() + 5
        while route_mtu(world, a, b.address) != "1280":
            assert time.monotonic() < deadline, "acme's own Packet Too Big was not honoured"
            time.sleep(0.05)
    finally:
        flow.kill()
        flow.wait()


_UDP_FLOW = """
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.connect((sys.argv[1], 5353))
s.send(b"flow")
print(s.getsockname()[1], flush=True)
time.sleep(20)
"""


def test_machine_cannot_spoof_a_non_6pn_source(world: World) -> None:
    """A raw SYN from an acme machine to the anycast address, from a source that is not its own: the
    gru edge never sees it (so never answers a spoofed address)."""
    lab, a = world.lab, world.a
    before = world.counter(a.host, "spoofed source from a machine", exists=False)
    sniffer = Background(lab, "edge-gru", "sniff", "eth0", SNIFF_SECONDS)
    try:
        for src in ("2001:db8:3::99", world.underlay6("client-gig"), world.g.address):
            world.raw(a.id, "send", "syn", src, ANYCAST6, "80")
        seen = sniffer.packets()
    finally:
        sniffer.kill()
    assert [p for p in seen if p.get("sport") == 40001 or p.get("dport") == 40001] == []
    assert world.counter(a.host, "spoofed source from a machine") >= before + 3
    # Its own address still works (over the mesh).
    assert lab.exec(a.id, ["curl", "-sS", "-o", "/dev/null", "-m", "2", f"http://[{world.b.address}]:8080/"]
                    ).returncode == 0


def test_path_mtu_discovery_on_the_mesh_still_works(world: World) -> None:
    """The WireGuard interfaces' MTU (1420) is below the veths' (1500): a full-size packet from a machine
    gets a Packet Too Big from its worker, and the next one fits (the errors that must still pass)."""
    lab, a, b = world.lab, world.a, world.b
    big = ["ping", "-n", "-q", "-c", "1", "-W", "3", "-M", "do", "-s", "1452", a.address]
    lab.exec(b.id, big)  # too big: answered by the worker's Packet Too Big
    assert route_mtu(world, b, a.address) == "1420"
    fits = ["ping", "-n", "-q", "-c", "1", "-W", "3", "-M", "do", "-s", "1300", a.address]
    assert lab.exec(b.id, fits).returncode == 0
