from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from wgmesh import keys, nftrules, wgctl
from wgmesh.desired import compute
from wgmesh.errors import MeshError
from wgmesh.peerconf import PeerConfig, check_file, render
from wgmesh.plan import RemovePeer, SetPeer, SetPrivateKey, WgOp

from .world import World, make_world


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = make_world(tmp_path / "state")
    yield w
    w.cat.close()


def test_rules_list_networks_edges_and_local_services(world: World) -> None:
    m = world.cat.create_machine("web", "worker-gru")
    s = world.cat.create_machine("web", "worker-sjc")
    g = world.cat.create_machine("db", "worker-gru")
    state = world.cat.snapshot()
    rules = nftrules.rules_for(state, "worker-gru", "wg6pn")
    assert [name for name, _ in rules.networks] == ["acme", "globex"]
    assert rules.edges == (state.hosts["edge-gru"].mesh_address,)
    # Only this host's machines, only declared ports: globex's db declares none.
    assert rules.services == ((ipaddress.IPv6Address(m.address), "tcp", 8080),)
    assert rules.local_dns
    # Every machine on this host, bound to its veth: whatever its app declares.
    assert set(rules.machines) == {(f"m{m.id}", m.prefix), (f"m{g.id}", g.prefix)}
    text = nftrules.render(rules)
    assert text.startswith("table inet sixpn\ndelete table inet sixpn\n")
    assert f"ip6 saddr {state.networks['acme'].prefix} ip6 daddr {state.networks['acme'].prefix} accept" in text
    assert f"{m.address} . tcp . 8080" in text
    assert f'"m{m.id}" . {m.prefix}' in text and f'"m{g.id}" . {g.prefix}' in text
    assert s.id not in text and s.address not in text
    assert 'iifname "wg6pn" accept' in text and 'oifname "wg6pn" return' in text
    assert "fib" not in text  # the default route made `fib saddr . iif oif missing` pass any source
    assert text.rstrip().endswith("}")
    assert not nftrules.rules_for(state, "gw-gru", "wg6pn").local_dns
    assert nftrules.rules_for(state, "gw-gru", "wg6pn").machines == ()


def _chain(text: str, name: str) -> list[str]:
    body = text.split(f"\tchain {name} {{\n", 1)[1].split("\n\t}\n", 1)[0]
    return [line.strip() for line in body.splitlines()]


def test_ingress_and_egress_are_per_interface(world: World) -> None:
    world.cat.create_machine("web", "worker-gru")
    text = nftrules.render(nftrules.rules_for(world.cat.snapshot(), "worker-gru", "wg6pn"))
    # In: lo, WireGuard, then machines (each only from its /112); anything else touching 6PN is dropped.
    assert _chain(text, "ingress") == [
        "type filter hook prerouting priority raw; policy accept;",
        "iif lo accept",
        'iifname "wg6pn" accept comment "WireGuard: each peer only from its allowed-ips"',
        "iifname @machine_links jump from_machine",
        'ip6 saddr fdaa::/16 counter drop comment "6PN source from the underlay"',
        'ip6 daddr fdaa::/16 counter drop comment "to 6PN from the underlay"',
    ]
    assert _chain(text, "from_machine")[0] == 'iifname . ip6 saddr @machine_sources accept comment "its own /112"'
    assert _chain(text, "from_machine")[-1] == 'counter drop comment "spoofed source from a machine"'
    # Out (forwarded or our own): 6PN only into WireGuard, a machine or lo.
    assert _chain(text, "forward")[1] == "jump egress" and _chain(text, "output")[1] == "jump egress"
    assert _chain(text, "egress")[-2:] == ['ip6 daddr fdaa::/16 counter drop comment "to 6PN onto the underlay"',
                                           'ip6 saddr fdaa::/16 counter drop comment "6PN source onto the underlay"']
    # Machines' DNS at fdaa::3 only from a machine's veth.
    assert "iifname @machine_links ip6 daddr fdaa::3 meta l4proto { udp, tcp } th dport 53 accept" in _chain(text,
                                                                                                        "input")


def test_related_icmp_only_from_the_flows_networks_or_a_host(world: World) -> None:
    state = world.cat.snapshot()
    text = nftrules.render(nftrules.rules_for(state, "worker-gru", "wg6pn"))
    assert _chain(text, "isolate")[:2] == ["ct state established accept", "ct state related jump related"]
    acme = state.networks["acme"].prefix
    assert _chain(text, "related") == [
        'ip6 saddr fdaa::/48 accept comment "from a host"',
        f'ip6 saddr {acme} ct original ip6 saddr {acme} accept comment "network acme"',
        f'ip6 saddr {acme} ct original ip6 daddr {acme} accept comment "network acme"',
        *[line for line in _chain(text, "related") if "globex" in line],
        'counter drop comment "related from another network"',
    ]
    assert len([line for line in _chain(text, "related") if "globex" in line]) == 2


def test_interface_names_are_checked(world: World) -> None:
    with pytest.raises(MeshError):
        nftrules.rules_for(world.cat.snapshot(), "worker-gru", 'wg" accept; #')
    with pytest.raises(MeshError):
        nftrules.Rules("sixteen-chars-xx", (), (), (), (), False)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace")
def test_ruleset_loads_in_nft(world: World) -> None:
    world.cat.create_machine("web", "worker-gru")
    text = nftrules.render(nftrules.rules_for(world.cat.snapshot(), "worker-gru", "wg6pn"))
    empty = nftrules.render(nftrules.Rules("wg6pn", (), (), (), (), False))
    ns = f"wgt-nft{os.getpid() % 10000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for script in (text, text, empty):  # loading twice proves the replace is idempotent
            subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script,
                           text=True, check=True)
        listed = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"], capture_output=True,
                                text=True, check=True).stdout
        assert listed.count("table inet sixpn") == 1
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_wg_set_argv_never_holds_the_private_key(world: World, tmp_path: Path) -> None:
    pair = world.keys["worker-gru"]
    want = compute(world.cat.snapshot(), "worker-gru", pair.public)
    ops: list[WgOp] = [SetPrivateKey(pair.public), *(SetPeer(s, True) for s in want.peers.values()),
                       RemovePeer("K=")]
    calls = wgctl.set_argv("sxwg1", ops, tmp_path / "k")
    flat = " ".join(" ".join(c) for c in calls)
    assert pair.private not in flat
    assert calls[0][:5] == ["wg", "set", "sxwg1", "private-key", str(tmp_path / "k")]
    assert "peer K= remove" in flat
    assert wgctl.set_argv("sxwg1", [], None) == []
    with pytest.raises(MeshError):
        wgctl.set_argv("sxwg1", [SetPrivateKey(pair.public)], None)


def test_wg_set_batches_many_peers() -> None:
    ops = [RemovePeer(f"K{i}=") for i in range(wgctl.BATCH * 2 + 1)]
    assert len(wgctl.set_argv("x", ops, None)) == 3


def test_config_matches_the_spec_shape() -> None:
    pair, gw = keys.generate(), keys.generate()
    conf = PeerConfig(pair.private, pair.public, ipaddress.IPv6Address("fdaa:0:1:4:0:9:0:102"),
                      ipaddress.IPv6Network("fdaa:0:1::/48"), ipaddress.IPv6Address("fdaa:0:1::3"), gw.public,
                      "192.0.2.4:51820")
    assert render(conf) == (
        "[Interface]\n"
        f"PrivateKey = {pair.private}\n"
        "Address = fdaa:0:1:4:0:9:0:102/120\n"
        "DNS = fdaa:0:1::3\n"
        "\n"
        "[Peer]\n"
        f"PublicKey = {gw.public}\n"
        "AllowedIPs = fdaa:0:1::/48\n"
        "Endpoint = 192.0.2.4:51820\n"
        "PersistentKeepalive = 15\n"
    )
    assert pair.private not in repr(conf)
    kept = render(PeerConfig(None, pair.public, conf.address, conf.network, conf.dns, gw.public, conf.endpoint))
    assert "\n# PrivateKey = <the private key of" in kept and pair.public in kept


@pytest.mark.parametrize("name", ["x.txt", "sixteen-chars-xx.conf", "bad name.conf", "a/b:c.conf"])
def test_bad_config_file_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(MeshError):
        check_file(tmp_path / name)
    check_file(tmp_path / "fifteen-chars-x.conf")
