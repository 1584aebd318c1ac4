"""Adapter tests: the real agent, wireguard-go, nft and wg-quick in namespaces of our own (`wgt-*`),
checked with ping, curl, wg and nft, never with wgmesh's own code."""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from catalog import Machine

from .minimesh import MiniMesh

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and network namespaces"),
]
WEB = {"http_service": {"internal_port": 8080}}


class World:
    def __init__(self, mesh: MiniMesh) -> None:
        self.mesh = mesh
        mesh.cat.create_org("acme")
        mesh.cat.create_org("globex")
        mesh.cat.create_app("web", "acme", config=WEB)
        mesh.cat.create_app("db", "globex", config=WEB)
        mesh.add_host("wa", "gru", "worker")
        mesh.add_host("wb", "sjc", "worker")
        mesh.add_host("edge", "gru", "edge")
        mesh.add_host("gw", "gru", "gateway")
        mesh.add_host("wc", "iad", "worker")
        self.a1: Machine = mesh.add_machine("web", "wa")
        self.g1: Machine = mesh.add_machine("db", "wa")
        self.b1: Machine = mesh.add_machine("web", "wb")
        self.g2: Machine = mesh.add_machine("db", "wb")
        mesh.wait_all()
        self.cmdlines: list[str] = []

    def snoop(self) -> None:
        """Keep every command line on the machine right now, to look for private keys later."""
        self.cmdlines.append(subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout)

    def in_machine(self, machine: Machine, *argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return self.mesh.run(self.mesh.machine_ns[machine.id], *argv, check=check)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    mesh = MiniMesh(tmp_path_factory.mktemp("mesh"))
    try:
        yield World(mesh)
    finally:
        mesh.close()


def ping(world: World, machine: Machine, address: str, count: int = 3) -> bool:
    return world.in_machine(machine, "ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "2",
                            address).returncode == 0


def curl(world: World, ns: str, address: str, port: int) -> bool:
    done = world.mesh.run(ns, "curl", "-sS", "-o", "/dev/null", "--max-time", "2", "-w", "%{http_code}",
                          f"http://[{address}]:{port}/", check=False)
    return done.returncode == 0 and done.stdout == "200"


def peer_row(world: World, host: str, peer_host: str) -> list[str]:
    key = world.mesh.cat.host(peer_host).public_key
    return next(row for row in world.mesh.wg_dump(host) if row[0] == key)


def test_full_mesh_with_exact_allowed_ips(world: World) -> None:
    mesh = world.mesh
    for host in ("wa", "wb", "edge", "gw", "wc"):
        keys = {row[0] for row in mesh.wg_dump(host)}
        others = {mesh.cat.host(h).public_key for h in mesh.hosts if h != host}
        assert keys == others, host
    allowed = set(peer_row(world, "wa", "wb")[3].split(","))
    wb = mesh.cat.host("wb")
    assert allowed == {f"{wb.mesh_address}/128", str(_prefix80(world.b1.address)), str(_prefix80(world.g2.address))}
    routes = mesh.run(mesh.ns("wa"), "ip", "-6", "route", "show", "proto", "167").stdout
    assert str(_prefix80(world.b1.address)) in routes


def _prefix80(address: str) -> str:
    return str(ipaddress.IPv6Network((address, 80), strict=False))


def test_machines_on_two_hosts_reach_each_other_through_wireguard(world: World) -> None:
    assert ping(world, world.a1, world.b1.address)
    assert curl(world, world.mesh.machine_ns[world.a1.id], world.b1.address, 9090)
    rx, tx = int(peer_row(world, "wa", "wb")[5]), int(peer_row(world, "wa", "wb")[6])
    assert rx > 0 and tx > 0
    assert int(peer_row(world, "wb", "wa")[5]) > 0
    world.snoop()


def test_orgs_are_isolated_even_on_one_worker(world: World) -> None:
    mesh = world.mesh
    assert not ping(world, world.a1, world.g1.address, count=2)  # same worker
    assert not ping(world, world.a1, world.g2.address, count=2)  # across the mesh
    acme_ns = mesh.machine_ns[world.a1.id]
    assert not curl(world, acme_ns, world.g1.address, 8080)
    assert not curl(world, acme_ns, world.g2.address, 8080)
    assert not curl(world, mesh.machine_ns[world.g1.id], world.a1.address, 8080)
    table = mesh.run(mesh.ns("wa"), "nft", "list", "table", "inet", "sixpn").stdout
    drops = re.search(r"counter packets (\d+) bytes \d+ drop comment \"cross-network\"", table)
    assert drops is not None and int(drops.group(1)) > 0


def test_spoofed_source_is_dropped_by_reverse_path_filter(world: World) -> None:
    # An acme machine borrowing a globex source address towards another acme machine.
    mesh = world.mesh
    ns = mesh.machine_ns[world.a1.id]
    mesh.ip(ns, "addr", "add", f"{world.g2.address}/128", "dev", "eth0", "nodad")
    try:
        done = mesh.run(ns, "ping", "-n", "-q", "-c", "2", "-W", "1", "-I", world.g2.address, world.b1.address,
                        check=False)
        assert done.returncode != 0
    finally:
        mesh.ip(ns, "addr", "del", f"{world.g2.address}/128", "dev", "eth0")
    table = mesh.run(mesh.ns("wa"), "nft", "list", "chain", "inet", "sixpn", "from_machine").stdout
    assert re.search(r"counter packets [1-9]\d* .*spoofed source from a machine", table)


def test_edge_reaches_only_the_declared_service_port(world: World) -> None:
    edge = world.mesh.ns("edge")
    assert curl(world, edge, world.b1.address, 8080)
    assert curl(world, edge, world.a1.address, 8080)
    assert not curl(world, edge, world.b1.address, 9090)
    done = world.mesh.run(edge, "ping", "-n", "-q", "-c", "2", "-W", "1", world.b1.address, check=False)
    assert done.returncode != 0


def test_new_machine_on_third_host_loses_no_ping_and_keeps_sessions(world: World) -> None:
    mesh = world.mesh
    assert ping(world, world.a1, world.b1.address, count=1)
    before = peer_row(world, "wa", "wb")
    long_ping = subprocess.Popen(
        ["ip", "netns", "exec", mesh.machine_ns[world.a1.id], "ping", "-n", "-q", "-c", "150", "-i", "0.02",
         world.b1.address], stdout=subprocess.PIPE, text=True)
    try:
        c1 = mesh.add_machine("web", "wc")
        mesh.wait_all()
        out, _ = long_ping.communicate(timeout=30)
    finally:
        if long_ping.poll() is None:
            long_ping.kill()
            long_ping.wait()
    assert " 0% packet loss" in out, out
    after = peer_row(world, "wa", "wb")
    assert after[3] == before[3] and after[4] == before[4]  # same allowed-ips, same handshake
    assert _prefix80(c1.address) in peer_row(world, "wa", "wc")[3].split(",")
    assert ping(world, world.a1, c1.address)
    world.snoop()


def test_laptop_peer_lifecycle_with_stock_wg_quick(world: World, tmp_path: Path) -> None:
    mesh = world.mesh
    lap_ns, _ = mesh.underlay("lap", 100)
    mesh.resolv_conf(lap_ns)
    real_resolv = Path("/etc/resolv.conf").read_bytes()
    ifname = f"wgt{mesh.tag}l"
    conf = tmp_path / f"{ifname}.conf"
    sixpn = [sys.executable, "-m", "sixpn.cli", "--state", str(mesh.state)]
    subprocess.run([*sixpn, "wg", "create", "acme", "gru", "alice", str(conf)], check=True, capture_output=True)
    up = mesh.run(lap_ns, "wg-quick", "up", str(conf), check=False)
    try:
        assert up.returncode == 0, up.stderr
        world.snoop()
        lap_ping = ["ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "2"]
        assert mesh.run(lap_ns, *lap_ping, world.b1.address, check=False).returncode == 0
        assert mesh.run(lap_ns, *lap_ping, world.g2.address, check=False).returncode != 0
        assert not curl(world, lap_ns, world.g1.address, 8080)
        assert "nameserver fdaa:" in mesh.run(lap_ns, "cat", "/etc/resolv.conf").stdout
        # Removal is effective before the command returns: the very next packet is lost.
        alice = mesh.cat.peer("alice").public_key
        assert alice in {row[0] for row in mesh.wg_dump("gw")}
        subprocess.run([*sixpn, "wg", "remove", "acme", "alice"], check=True, capture_output=True)
        assert alice not in {row[0] for row in mesh.wg_dump("gw")}
        assert mesh.run(lap_ns, "ping", "-n", "-q", "-c", "2", "-W", "1", world.b1.address, check=False).returncode
    finally:
        mesh.run(lap_ns, "wg-quick", "down", str(conf), check=False)
    assert Path("/etc/resolv.conf").read_bytes() == real_resolv

    # Reset: the old config is dead, the new one works.
    conf2 = tmp_path / f"{ifname}2.conf"
    conf.unlink()
    subprocess.run([*sixpn, "wg", "create", "acme", "gru", "bob", str(conf)], check=True, capture_output=True)
    subprocess.run([*sixpn, "wg", "reset", "acme", "bob", str(conf2)], check=True, capture_output=True)
    for path, works in ((conf, False), (conf2, True)):
        assert mesh.run(lap_ns, "wg-quick", "up", str(path), check=False).returncode == 0
        try:
            got = mesh.run(lap_ns, "ping", "-n", "-q", "-c", "2", "-i", "0.3", "-W", "2", world.b1.address,
                           check=False).returncode == 0
            assert got is works, path
        finally:
            mesh.run(lap_ns, "wg-quick", "down", str(path), check=False)


def test_no_private_key_in_logs_or_command_lines(world: World) -> None:
    mesh = world.mesh
    secrets = [mesh.key_file(h).read_text().strip() for h in mesh.hosts]
    assert all(len(s) == 44 for s in secrets)
    logs = "".join(p.read_text(errors="replace") for p in mesh.logs.iterdir())
    assert "interface" in logs  # the agents did log
    for secret in secrets:
        assert secret not in logs
        assert all(secret not in snap for snap in world.cmdlines)


def wait_renewed(world: World) -> None:
    """Until wb's new interface has a handshake with wa while no machine sends anything: only the agent's
    session renewal can have started it (wa still holds the old session and has no reason to)."""
    mesh = world.mesh
    key = mesh.cat.host("wa").public_key
    deadline = time.monotonic() + 15
    while True:
        done = mesh.run(mesh.ns("wb"), "wg", "show", mesh.ifname("wb"), "latest-handshakes", check=False)
        stamps = dict(line.split("\t") for line in done.stdout.splitlines()) if done.returncode == 0 else {}
        if stamps.get(key, "0") != "0":
            return
        assert mesh.agents["wb"].poll() is None, "the agent died"
        assert time.monotonic() < deadline, "no fresh handshake with wa after the restart"
        time.sleep(0.05)


def test_wireguard_go_death_is_healed(world: World) -> None:
    mesh = world.mesh
    ifname = mesh.ifname("wb")
    pid = next(line.split()[0] for line in subprocess.run(["ps", "-eo", "pid,args"], capture_output=True,
                                                          text=True).stdout.splitlines()
               if line.split()[1:] == ["wireguard-go", ifname])
    subprocess.run(["kill", "-9", pid], check=True)
    deadline = time.monotonic() + 15
    while True:
        done = mesh.run(mesh.ns("wb"), "wg", "show", ifname, "peers", check=False)
        if done.returncode == 0 and mesh.cat.host("wa").public_key in done.stdout.split():
            break
        assert time.monotonic() < deadline, "interface not rebuilt"
        time.sleep(0.1)
    wait_renewed(world)
    # The first packet already gets through: the agent renewed the session wa still held with the dead one.
    assert ping(world, world.a1, world.b1.address, count=1)
    assert mesh.agents["wb"].poll() is None


def test_agent_restart_takes_its_interface_down_and_back(world: World) -> None:
    mesh = world.mesh
    assert ping(world, world.a1, world.b1.address, count=1)
    agent = mesh.agents["wb"]
    agent.kill()
    agent.wait()
    deadline = time.monotonic() + 10
    # wireguard-go dies with its agent (PR_SET_PDEATHSIG), taking the interface with it.
    while mesh.run(mesh.ns("wb"), "ip", "link", "show", mesh.ifname("wb"), check=False).returncode == 0:
        assert time.monotonic() < deadline, "interface outlived its agent"
        time.sleep(0.05)
    mesh.start_agent("wb")
    wait_renewed(world)
    assert ping(world, world.a1, world.b1.address, count=1)


def test_resync_without_changes_applies_nothing(world: World) -> None:
    mesh = world.mesh
    mesh.wait_all()
    logs = {h: (mesh.logs / f"{h}.mesh.log").read_text() for h in mesh.agents}
    dumps = {h: mesh.wg_dump(h) for h in mesh.agents}
    time.sleep(2.5)  # longer than the agents' --resync 2: every agent has reconciled at least once more
    for host in mesh.agents:
        new = (mesh.logs / f"{host}.mesh.log").read_text()[len(logs[host]):]
        assert not re.search(r": v\d+: ", new), new
        assert sorted(row[:4] for row in mesh.wg_dump(host)) == sorted(row[:4] for row in dumps[host])
