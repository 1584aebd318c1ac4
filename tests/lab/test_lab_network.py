"""The lab's underlay, checked with ping and curl: RTTs match the matrix, anycast reaches the nearest live edge."""

from __future__ import annotations

import itertools
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from catalog import default_regions
from netns_lab.lab import Lab
from netns_lab.plan import ANYCAST4, ANYCAST6
from tests.conftest import ping_avg

pytestmark = pytest.mark.lab
WHOAMI_PORT = 8000


def within(measured: float, expected: float) -> bool:
    """The issue's tolerance: within 10% or 2 ms of the matrix."""
    return abs(measured - expected) <= max(0.1 * expected, 2.0)


def test_rtt_between_every_region_pair_matches_the_matrix(lab: Lab) -> None:
    regions = default_regions()
    codes = [r.code for r in lab.plan.regions]
    pairs = [(a, a) for a in codes] + list(itertools.combinations(codes, 2))
    # Each region's worker pings the other region's edge; intra-region: worker -> edge of the same region.
    jobs = [(f"worker-{a}", str(lab.plan.node(f"edge-{b}").v4), regions.rtt(a, b) * lab.topology.scale)
            for a, b in pairs]
    jobs.append(("client-gru", str(lab.plan.node("worker-sjc").v6), regions.rtt("gru", "sjc")))
    with ThreadPoolExecutor(len(jobs)) as pool:
        measured = list(pool.map(lambda job: ping_avg(lab, job[0], job[1]), jobs))
    results = list(zip(jobs, measured, strict=True))
    report = [f"{node}->{addr}: {got:.2f} ms (matrix {want:g})" for (node, addr, want), got in results]
    assert all(within(got, want) for (_, _, want), got in results), report


@pytest.fixture
def whoami(lab: Lab) -> Iterator[None]:
    """A tiny HTTP server on every edge, port 8000, serving /whoami = the edge's name."""
    procs = []
    with tempfile.TemporaryDirectory() as root:
        try:
            for edge in lab.plan.with_role("edge"):
                folder = Path(root, edge.name)
                folder.mkdir()
                (folder / "whoami").write_text(edge.name)
                procs.append(subprocess.Popen(
                    lab.exec_argv(edge.name, ["python3", "-m", "http.server", "--bind", "::", "--directory",
                                              str(folder), str(WHOAMI_PORT)]),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            for edge in lab.plan.with_role("edge"):
                assert lab.exec(edge.name, ["sh", "-c", f"for i in $(seq 100); do curl -sf "
                                f"http://127.0.0.1:{WHOAMI_PORT}/whoami && exit 0; sleep 0.05; done; exit 1"
                                ]).returncode == 0
            yield
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()


def reached(lab: Lab, client: str, address: str) -> str:
    host = f"[{address}]" if ":" in address else address
    out = lab.exec(client, ["curl", "-s", "-m", "5", f"http://{host}:{WHOAMI_PORT}/whoami"])
    return out.stdout.strip()


def test_each_client_reaches_its_own_edge_then_the_next_nearest_after_cut(lab: Lab, whoami: None) -> None:
    for region in ("gru", "gig", "sjc"):
        for address in (str(ANYCAST4), str(ANYCAST6)):
            assert reached(lab, f"client-{region}", address) == f"edge-{region}"
    lab.cut("edge-gru")
    try:
        for address in (str(ANYCAST4), str(ANYCAST6)):
            assert reached(lab, "client-gru", address) == "edge-gig"  # gru-gig 8 ms, gru-sjc 175 ms
            assert reached(lab, "client-sjc", address) == "edge-sjc"
        assert within(ping_avg(lab, "client-gru", str(ANYCAST4)), default_regions().rtt("gru", "gig"))
        assert lab.exec("client-gru", ["ping", "-c", "1", "-W", "1", str(lab.plan.node("edge-gru").v4)]).returncode != 0
    finally:
        lab.heal("edge-gru")
    assert reached(lab, "client-gru", str(ANYCAST4)) == "edge-gru"


def test_every_host_reaches_every_other_host(lab: Lab) -> None:
    nodes = lab.plan.nodes
    script = "; ".join(f"ping -c1 -W3 -q {n.v4} >/dev/null || echo FAIL {n.name}" for n in nodes)
    with ThreadPoolExecutor(len(nodes)) as pool:
        outs = list(pool.map(lambda n: lab.exec(n.name, ["sh", "-c", script]).stdout, nodes))
    assert not any("FAIL" in out for out in outs), outs


def test_a_stopped_or_dead_proxy_withdraws_its_edge(lab: Lab, whoami: None) -> None:
    if "proxy" not in lab.groups():
        pytest.skip("no edge proxy in this tree yet")
    lab.stop_service("edge-gru", "proxy")
    try:
        assert lab.withdrawn_set() == {"edge-gru"}
        assert reached(lab, "client-gru", str(ANYCAST4)) == "edge-gig"
        assert reached(lab, "client-gig", str(ANYCAST6)) == "edge-gig"
    finally:
        lab.start_service("edge-gru", "proxy")
    assert reached(lab, "client-gru", str(ANYCAST4)) == "edge-gru"
