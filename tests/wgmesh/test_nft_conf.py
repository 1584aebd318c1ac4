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
    world.cat.create_machine("web", "worker-sjc")
    g = world.cat.create_machine("db", "worker-gru")
    state = world.cat.snapshot()
    rules = nftrules.rules_for(state, "worker-gru")
    assert [name for name, _ in rules.networks] == ["acme", "globex"]
    assert rules.edges == (state.hosts["edge-gru"].mesh_address,)
    # Only this host's machines, only declared ports: globex's db declares none.
    assert rules.services == ((ipaddress.IPv6Address(m.address), "tcp", 8080),)
    assert rules.local_dns
    text = nftrules.render(rules)
    assert text.startswith("table inet sixpn\ndelete table inet sixpn\n")
    assert f"ip6 saddr {state.networks['acme'].prefix} ip6 daddr {state.networks['acme'].prefix} accept" in text
    assert f"{m.address} . tcp . 8080" in text
    assert g.address not in text
    assert "fib saddr . iif oif missing" in text
    assert text.rstrip().endswith("}")
    assert not nftrules.rules_for(state, "gw-gru").local_dns


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace")
def test_ruleset_loads_in_nft(world: World) -> None:
    world.cat.create_machine("web", "worker-gru")
    text = nftrules.render(nftrules.rules_for(world.cat.snapshot(), "worker-gru"))
    empty = nftrules.render(nftrules.Rules((), (), (), False))
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
