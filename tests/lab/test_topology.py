"""Topology files and the plan derived from them (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from catalog import default_regions
from netns_lab import plan, topology
from netns_lab.errors import LabError, TopologyError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "three-regions.toml"


def test_example_is_the_issue_topology() -> None:
    topo = topology.load(EXAMPLE)
    p = plan.make_plan("sx", topo)
    names = [n.name for n in p.nodes]
    for r in ("gru", "gig", "sjc"):
        assert {f"edge-{r}", f"worker-{r}", f"client-{r}"} <= set(names)
    assert "gw-gru" in names and "laptop-alice" in names
    assert topo.orgs == ("acme", "globex")
    assert len(set(names)) == len(names)
    assert all(n.ns == f"sx-{n.name}" for n in p.nodes)


def test_default_matches_example() -> None:
    assert topology.default() == topology.load(EXAMPLE)


def test_numbered_nodes_and_unique_addresses() -> None:
    topo = topology.loads("[regions.iad]\nedges = 2\nworkers = 3\n[regions.ams]\nclient = false\n")
    p = plan.make_plan("ab", topo)
    names = [n.name for n in p.nodes]
    assert names == ["edge-iad", "edge-iad-2", "worker-iad", "worker-iad-2", "worker-iad-3", "client-iad",
                     "edge-ams", "worker-ams"]
    assert len({n.v4 for n in p.nodes}) == len(p.nodes)
    assert len({n.v6 for n in p.nodes}) == len(p.nodes)
    for node in p.nodes:
        assert node.v4 in node.net.net4 and node.v6 in node.net.net6
        assert node.v4 != node.net.gw4
        assert len(node.bb_if) <= 15
    assert all(len(p.wg_ifname(n)) <= 15 for n in p.hosts())


@pytest.mark.parametrize("text, fragment", [
    ("[regions.gru]\nedge = 1\n", "regions.gru.edge: unknown key"),
    ("[regions.xyz]\n", "regions.xyz: unknown region"),
    ("bogus = 1\n[regions.gru]\n", "bogus: unknown key"),
    ("[regions.gru]\nworkers = -1\n", "regions.gru.workers"),
    ("[regions.gru]\n[laptops.bob]\nregion = \"sjc\"\n", "laptops.bob.region"),
    ("[regions.gru]\n[orgs.Acme]\n", "orgs.Acme"),
    ("scale = 0\n[regions.gru]\n", "scale"),
    ("", "at least one region"),
    ("[regions.gru\n", "not valid TOML"),
])
def test_bad_topologies_are_refused(text: str, fragment: str) -> None:
    with pytest.raises(TopologyError, match=fragment.replace(".", r"\.")):
        topology.loads(text)


@pytest.mark.parametrize("lab_id", ["", "toolong", "1ab", "a-b", "AB"])
def test_bad_lab_ids(lab_id: str) -> None:
    with pytest.raises(LabError):
        plan.check_lab_id(lab_id)


def test_anycast_goes_to_own_region_then_next_nearest() -> None:
    p = plan.make_plan("sx", topology.default())
    table = default_regions()
    choice = plan.anycast_choice(p, table, frozenset())
    assert {r: e.name if e else None for r, e in choice.items()} == {
        "gru": "edge-gru", "gig": "edge-gig", "sjc": "edge-sjc"}
    cut = plan.anycast_choice(p, table, frozenset({"edge-gru"}))
    assert cut["gru"] is not None and cut["gru"].name == "edge-gig"  # gru-gig 8 ms < gru-sjc 175 ms
    assert cut["sjc"] is not None and cut["sjc"].name == "edge-sjc"
    none = plan.anycast_choice(p, table, frozenset({"edge-gru", "edge-gig", "edge-sjc"}))
    assert set(none.values()) == {None}
    lines = plan.anycast_lines(p, none)
    assert all("unreachable" in line for line in lines)


def test_backbone_lines_route_each_region_through_its_delay_line() -> None:
    p = plan.make_plan("sx", topology.default())
    lines = plan.backbone_lines(p)
    rules = plan.backbone_rule_lines(p)
    for r in p.regions:
        assert f"route add default dev {r.tun} table {r.to_delay_table}" in lines
        assert f"rule add pref {plan.RULE_PREF_TO_DELAY} iif {r.bridge} lookup {r.to_delay_table}" in rules
        assert f"rule add pref {plan.RULE_PREF_ANYCAST} iif {r.tun} lookup {r.anycast_table}" in rules
    edge = p.node("edge-gru")
    assert f"addr add {plan.ANYCAST4}/32 dev lo" in plan.node_lines(p, edge)
    assert "addr add fdaa::3/128 dev lo" in plan.node_lines(p, p.node("worker-gru"))


def test_a_topology_object_round_trips_through_its_toml() -> None:
    from netns_lab.lab import topology_to_toml

    topo = topology.loads("scale = 0.5\n[regions.iad]\nedges = 2\ngateway = true\n[regions.ams]\nclient = false\n"
                          "[orgs.acme]\n[laptops.bob]\nregion = \"ams\"\n")
    assert topology.loads(topology_to_toml(topo)) == topo
