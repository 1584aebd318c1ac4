"""Lab tests of the mesh (issue 4's "done when"), in the shared three-region lab of tests/conftest.py.

Checked only with ping, curl, wg, nft, wg-quick and ps; sixpn is used only to set things up (apps,
machines, laptop peers) the way a user would.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from catalog import Machine
from netns_lab.lab import Lab
from tests.conftest import ping_avg

pytestmark = pytest.mark.lab
WEB = {"http_service": {"internal_port": 8080}}
Run = Callable[..., subprocess.CompletedProcess[str]]
MakeApp = Callable[..., list[Machine]]


def sixpn(lab: Lab, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sixpn.cli", "--host-config", str(lab.operator_config), *argv],
                          capture_output=True, text=True, check=check, timeout=60)


def wg_rows(lab: Lab, host: str) -> dict[str, list[str]]:
    """`wg show <if> dump` of a host, peers by public key."""
    ifname = lab.plan.wg_ifname(lab.plan.node(host))
    out = lab.exec(host, ["wg", "show", ifname, "dump"], check=True).stdout
    return {cols[0]: cols for cols in (line.split("\t") for line in out.splitlines()[1:])}


def host_key(lab: Lab, host: str) -> str:
    with lab.catalog() as cat:
        return cat.host(host).public_key


def ok(done: subprocess.CompletedProcess[str]) -> bool:
    return done.returncode == 0


def pinged(run: Run, node: str, address: str, count: int = 2) -> bool:
    return ok(run(node, "ping", "-n", "-q", "-c", str(count), "-i", "0.3", "-W", "2", address))


def http_ok(run: Run, node: str, address: str, port: int) -> bool:
    done = run(node, "curl", "-sS", "-o", "/dev/null", "-m", "2", "-w", "%{http_code}", f"http://[{address}]:{port}/")
    return ok(done) and done.stdout == "200"


class Snoop:
    """Command lines of every process, sampled while the tests run (for the private-key check)."""

    def __init__(self) -> None:
        self.samples: list[str] = []

    def __call__(self) -> None:
        self.samples.append(subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout)


@pytest.fixture(scope="module", autouse=True)
def mesh_up(lab: Lab) -> None:
    """Wait (with `wg show`) until every host's interface has every other host as a peer: `lab up` returns
    once the agents run, not once they have converged."""
    hosts = [n.name for n in lab.plan.hosts()]
    deadline = time.monotonic() + 30
    while True:
        with lab.catalog() as cat:
            keys = {h: cat.host(h).public_key for h in hosts}
        ready = all(keys.values())
        for host in hosts if ready else ():
            ifname = lab.plan.wg_ifname(lab.plan.node(host))
            done = lab.exec(host, ["wg", "show", ifname, "peers"])
            ready = ready and done.returncode == 0 and set(done.stdout.split()) >= set(keys.values()) - {keys[host]}
        if ready:
            return
        assert time.monotonic() < deadline, "the mesh did not converge after lab up"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def snoop() -> Snoop:
    return Snoop()


@pytest.fixture(scope="module")
def secrets_seen() -> list[str]:
    return []


def test_acme_machines_in_gru_and_sjc_talk_over_wireguard(lab: Lab, lab_app: MakeApp, lab_run: Run,
                                                         snoop: Snoop) -> None:
    gru, sjc = sorted(lab_app("wgm-web", "acme", 2, ["gru", "sjc"], WEB), key=lambda m: m.region)
    assert (gru.region, sjc.region) == ("gru", "sjc")
    key_gru, key_sjc = host_key(lab, gru.host), host_key(lab, sjc.host)
    before = int(wg_rows(lab, gru.host)[key_sjc][6])
    avg = ping_avg(lab, gru.id, sjc.address, count=3)
    snoop()
    expected = lab.regions.rtt("gru", "sjc") * lab.topology.scale
    # The packets crossed the emulated gru-sjc path (a lower bound: a loaded machine only adds delay).
    assert avg >= expected * 0.9, (avg, expected)
    assert http_ok(lab_run, gru.id, sjc.address, 8080)
    gru_row, sjc_row = wg_rows(lab, gru.host)[key_sjc], wg_rows(lab, sjc.host)[key_gru]
    assert int(gru_row[6]) > before and int(gru_row[5]) > 0
    assert int(sjc_row[5]) > 0 and int(sjc_row[6]) > 0
    assert int(gru_row[4]) > 0  # a handshake happened
    assert str(ipaddress.IPv6Network((sjc.address, 80), strict=False)) in gru_row[3].split(",")
    print(f"gru-sjc 6PN ping avg {avg:.1f} ms (region RTT {expected:.1f} ms)")


def test_orgs_are_isolated_and_edges_reach_only_service_ports(lab: Lab, lab_app: MakeApp, lab_run: Run) -> None:
    (acme,) = lab_app("wgm-iso-a", "acme", 1, ["gru"], WEB)
    (globex,) = lab_app("wgm-iso-g", "globex", 1, ["gru"], WEB)
    (remote,) = lab_app("wgm-iso-r", "globex", 1, ["sjc"], WEB)
    assert acme.host == globex.host
    # A second listener in the acme machine, on a port its app does not declare.
    extra = subprocess.Popen(lab.exec_argv(acme.id, [sys.executable, "-m", "http.server", "--bind", "::", "9099"]),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not http_ok(lab_run, acme.id, acme.address, 9099) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert http_ok(lab_run, acme.id, acme.address, 9099)  # it is there
        for src, dst in ((acme, globex), (globex, acme), (acme, remote), (remote, acme)):
            assert not pinged(lab_run, src.id, dst.address), (src.app, dst.app)
            assert not http_ok(lab_run, src.id, dst.address, 8080), (src.app, dst.app)
        edge = "edge-gru"
        assert http_ok(lab_run, edge, acme.address, 8080)
        assert http_ok(lab_run, "edge-sjc", acme.address, 8080)
        assert not http_ok(lab_run, edge, acme.address, 9099)
        assert not pinged(lab_run, edge, acme.address)
    finally:
        extra.terminate()
        extra.wait(5)
    table = lab_run(acme.host, "nft", "list", "table", "inet", "sixpn").stdout
    drops = re.search(r"counter packets (\d+) bytes \d+ drop comment \"cross-network\"", table)
    assert drops is not None and int(drops.group(1)) > 0


Laptop = tuple[str, Callable[[Path], subprocess.CompletedProcess[str]]]


@pytest.fixture
def laptop(lab: Lab, tmp_path: Path) -> Iterator[Laptop]:
    """The laptop namespace, with its own resolv.conf view so wg-quick's resolvconf writes only there."""
    ns = lab.netns_of("laptop-alice")
    etc = Path("/etc/netns") / ns
    made = not (etc / "resolv.conf").exists()
    if made:
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text("# laptop-alice\n")
    ups: list[Path] = []

    def up(conf: Path) -> subprocess.CompletedProcess[str]:
        ups.append(conf)
        return lab.exec("laptop-alice", ["wg-quick", "up", str(conf)])

    try:
        yield ns, up
    finally:
        for conf in ups:
            lab.exec("laptop-alice", ["wg-quick", "down", str(conf)])
        if made:
            (etc / "resolv.conf").unlink(missing_ok=True)


def test_laptop_with_stock_wg_quick(lab: Lab, lab_app: MakeApp, lab_run: Run, tmp_path: Path, laptop: Laptop,
                                    snoop: Snoop, secrets_seen: list[str]) -> None:
    (acme,) = lab_app("wgm-lap-a", "acme", 1, ["sjc"], WEB)
    (globex,) = lab_app("wgm-lap-g", "globex", 1, ["sjc"], WEB)
    _ns, up = laptop
    real_resolv = Path("/etc/resolv.conf").read_bytes()
    name = f"wgm{os.getpid() % 10000}"
    conf = tmp_path / f"{lab.lab_id}l{os.getpid() % 10000}.conf"
    sixpn(lab, "wg", "create", "acme", "gru", name, str(conf))
    secrets_seen.append(re.search(r"PrivateKey = (\S+)", conf.read_text()).group(1))  # type: ignore[union-attr]
    try:
        assert ok(up(conf))
        snoop()
        assert "nameserver fdaa:" in lab_run("laptop-alice", "cat", "/etc/resolv.conf").stdout
        assert pinged(lab_run, "laptop-alice", acme.address)
        assert http_ok(lab_run, "laptop-alice", acme.address, 8080)
        assert not pinged(lab_run, "laptop-alice", globex.address)
        lab.exec("laptop-alice", ["wg-quick", "down", str(conf)])
        # A laptop that guesses: AllowedIPs widened to all of fdaa::/16. The gateway still drops it.
        greedy = tmp_path / f"{lab.lab_id}g{os.getpid() % 10000}.conf"
        greedy.write_text(conf.read_text().replace(f"AllowedIPs = {_net(acme)}", "AllowedIPs = fdaa::/16"))
        greedy.chmod(0o600)
        assert ok(up(greedy))
        assert not pinged(lab_run, "laptop-alice", globex.address)
        assert not http_ok(lab_run, "laptop-alice", globex.address, 8080)
        assert pinged(lab_run, "laptop-alice", acme.address)
        # Removal: gone from the gateway's `wg show` when the command returns; the next packet is lost.
        listed = json.loads(sixpn(lab, "wg", "list", "acme", "--json").stdout)
        (key,) = [row["public_key"] for row in listed if row["name"] == name]
        assert key in wg_rows(lab, "gw-gru")
        sixpn(lab, "wg", "remove", "acme", name)
        assert key not in wg_rows(lab, "gw-gru")
        assert not pinged(lab_run, "laptop-alice", acme.address)
        lab.exec("laptop-alice", ["wg-quick", "down", str(greedy)])
    finally:
        sixpn(lab, "wg", "remove", "acme", name, check=False)
    assert Path("/etc/resolv.conf").read_bytes() == real_resolv


def _net(machine: Machine) -> str:
    return str(ipaddress.IPv6Network((machine.address, 48), strict=False))


def test_laptop_reset_kills_the_old_config(lab: Lab, lab_app: MakeApp, lab_run: Run, tmp_path: Path,
                                           laptop: Laptop, secrets_seen: list[str]) -> None:
    (acme,) = lab_app("wgm-rst", "acme", 1, ["gru"], WEB)
    _ns, up = laptop
    name = f"wgr{os.getpid() % 10000}"
    old = tmp_path / f"{lab.lab_id}o{os.getpid() % 10000}.conf"
    new = tmp_path / f"{lab.lab_id}n{os.getpid() % 10000}.conf"
    sixpn(lab, "wg", "create", "acme", "gru", name, str(old))
    try:
        sixpn(lab, "wg", "reset", "acme", name, str(new))
        for conf in (old, new):
            secrets_seen.append(re.search(r"PrivateKey = (\S+)", conf.read_text()).group(1))  # type: ignore[union-attr]
        assert ok(up(old))
        assert not pinged(lab_run, "laptop-alice", acme.address)
        lab.exec("laptop-alice", ["wg-quick", "down", str(old)])
        assert ok(up(new))
        assert pinged(lab_run, "laptop-alice", acme.address)
        lab.exec("laptop-alice", ["wg-quick", "down", str(new)])
    finally:
        sixpn(lab, "wg", "remove", "acme", name, check=False)


def test_new_machine_on_another_host_loses_no_packet(lab: Lab, lab_app: MakeApp, lab_run: Run, snoop: Snoop) -> None:
    gru, sjc = sorted(lab_app("wgm-long", "acme", 2, ["gru", "sjc"], WEB), key=lambda m: m.region)
    assert pinged(lab_run, gru.id, sjc.address, count=1)  # session up before we watch it
    key_sjc = host_key(lab, sjc.host)
    before = wg_rows(lab, gru.host)[key_sjc]
    long_ping = subprocess.Popen(
        lab.exec_argv(gru.id, ["ping", "-n", "-q", "-c", "100", "-i", "0.05", sjc.address]),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(0.5)
        (gig,) = lab_app("wgm-new", "acme", 1, ["gig"], WEB)
        # Every host's agent has applied the new placement while the ping still runs.
        deadline = time.monotonic() + 10
        want = str(ipaddress.IPv6Network((gig.address, 80), strict=False))
        while want not in wg_rows(lab, gru.host)[host_key(lab, gig.host)][3].split(","):
            assert time.monotonic() < deadline, "placement not applied"
            time.sleep(0.05)
        assert long_ping.poll() is None, "the ping ended before the placement: the test proves nothing"
        snoop()
        out, _ = long_ping.communicate(timeout=60)
    finally:
        if long_ping.poll() is None:
            long_ping.kill()
            long_ping.wait()
    assert ", 0% packet loss" in out, out
    after = wg_rows(lab, gru.host)[key_sjc]
    assert after[3] == before[3] and after[4] == before[4]  # that peer untouched: same AllowedIPs, same handshake
    assert pinged(lab_run, gru.id, gig.address, count=1)


def test_no_private_key_in_logs_or_command_lines(lab: Lab, snoop: Snoop, secrets_seen: list[str]) -> None:
    snoop()
    host_keys = [p.read_text().strip() for p in (lab.run_dir / "keys").glob("*.key")]
    assert len(host_keys) >= 5
    logs = "\n".join(p.read_text(errors="replace") for p in lab.logs_dir.glob("*.log"))
    assert "wgmesh.agent" in logs
    for secret in [*host_keys, *secrets_seen]:
        assert secret not in logs
        assert all(secret not in sample for sample in snoop.samples)
