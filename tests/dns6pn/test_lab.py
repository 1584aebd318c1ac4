"""Lab tests of `.internal` DNS (issue 5's "done when"), in the shared three-region lab of tests/conftest.py.

Checked only with the stock `dig` inside machine and laptop namespaces (the machine's resolv.conf says
`nameserver fdaa::3`); sixpn is used only to set things up the way a user would (apps, machines, a laptop
peer, `sixpn machines stop`).
"""

from __future__ import annotations

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
from tests.conftest import MakeApp, app_maker

pytestmark = pytest.mark.lab
WEB = {"http_service": {"internal_port": 8080}}


def sixpn(lab: Lab, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sixpn.cli", "--host-config", str(lab.operator_config), *argv],
                          capture_output=True, text=True, check=check, timeout=60)


def dig(lab: Lab, node: str, *args: str) -> subprocess.CompletedProcess[str]:
    return lab.exec(node, ["dig", "+time=2", "+tries=2", *args])


def short(lab: Lab, node: str, name: str, rdtype: str = "AAAA", *server: str) -> list[str]:
    done = dig(lab, node, *server, name, rdtype, "+short")
    assert done.returncode == 0, done.stdout + done.stderr
    return sorted(line.strip().strip('"') for line in done.stdout.splitlines() if line.strip())


def vms(lab: Lab, node: str, *server: str) -> set[str]:
    (record,) = short(lab, node, "vms.dnsl-web.internal", "TXT", *server)
    return set(record.split(","))


def status(lab: Lab, node: str, name: str, rdtype: str = "AAAA", *server: str) -> str:
    out = dig(lab, node, *server, name, rdtype).stdout
    match = re.search(r"status: (\w+)", out)
    assert match, out
    return match.group(1)


def until(check: Callable[[], bool], timeout: float = 20.0) -> float:
    """Seconds until `check` held (polled every 50 ms); fails after a generous deadline."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "condition never held"
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def apps(lab: Lab, lab_app: MakeApp) -> tuple[list[Machine], Machine]:
    web = sorted(lab_app("dnsl-web", "acme", 2, ["gru", "sjc"], WEB), key=lambda m: m.region)
    (other,) = lab_app("dnsl-gx", "globex", 1, ["gru"], WEB)
    # Every worker's DNS server follows the catalog; wait until the first answer shows the machines.
    until(lambda: short(lab, web[0].id, "dnsl-web.internal") == sorted(m.address for m in web))
    return web, other


@pytest.fixture(scope="module")
def lab_app(lab: Lab) -> Iterator[MakeApp]:
    """Module-scoped: the apps are shared by this module's tests."""
    with app_maker(lab) as make:
        yield make


def test_names_from_an_acme_machine(lab: Lab, apps: tuple[list[Machine], Machine]) -> None:
    (gru, sjc), _ = apps
    node = sjc.id  # a machine on worker-sjc asks its own worker's fdaa::3
    assert short(lab, node, "dnsl-web.internal") == sorted([gru.address, sjc.address])
    assert short(lab, node, "gru.dnsl-web.internal") == [gru.address]
    assert vms(lab, node) == {f"{gru.id} gru", f"{sjc.id} sjc"}
    assert "dnsl-web" in short(lab, node, "_apps.internal", "TXT")[0].split(",")
    assert "dnsl-gx" not in short(lab, node, "_apps.internal", "TXT")[0].split(",")
    assert short(lab, node, f"{gru.id}.vm.dnsl-web.internal") == [gru.address]
    assert short(lab, node, "top1.nearest.of.dnsl-web.internal") == [sjc.address]  # its own region first
    assert short(lab, gru.id, "top1.nearest.of.dnsl-web.internal") == [gru.address]
    assert status(lab, node, "dnsl-web.internal", "A") == "NOERROR"  # NODATA: IPv6 only
    assert status(lab, node, "nosuch.internal") == "NXDOMAIN"


def test_acme_names_are_nxdomain_from_a_globex_machine(lab: Lab, apps: tuple[list[Machine], Machine]) -> None:
    (gru, _sjc), other = apps
    assert short(lab, other.id, "dnsl-gx.internal") == [other.address]
    assert status(lab, other.id, "dnsl-web.internal") == "NXDOMAIN"
    assert status(lab, other.id, f"{gru.id}.vm.dnsl-web.internal") == "NXDOMAIN"
    assert short(lab, other.id, "_apps.internal", "TXT") == ["dnsl-gx"]


@pytest.fixture
def laptop(lab: Lab, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """alice's laptop on acme's network through the gru gateway, brought up with the stock wg-quick."""
    ns = lab.netns_of("laptop-alice")
    etc = Path("/etc/netns") / ns
    made = not (etc / "resolv.conf").exists()
    if made:
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text("# laptop-alice\n")
    tag = os.getpid() % 10000
    name = f"dnsl{tag}"
    conf = tmp_path / f"{lab.lab_id}d{tag}.conf"
    sixpn(lab, "wg", "create", "acme", "gru", name, str(conf))
    try:
        up = lab.exec("laptop-alice", ["wg-quick", "up", str(conf)])
        assert up.returncode == 0, up.stderr
        yield name, re.search(r"DNS = (\S+)", conf.read_text()).group(1)  # type: ignore[union-attr]
    finally:
        lab.exec("laptop-alice", ["wg-quick", "down", str(conf)])
        sixpn(lab, "wg", "remove", "acme", name, check=False)
        if made:
            (etc / "resolv.conf").unlink(missing_ok=True)


def test_laptop_through_wireguard_sees_what_an_acme_machine_sees(
    lab: Lab, apps: tuple[list[Machine], Machine], laptop: tuple[str, str]
) -> None:
    (gru, sjc), _ = apps
    peer, dns_address = laptop
    server = f"@{dns_address}"  # the network's ::3, on the gateway
    with lab.catalog() as cat:
        assert dns_address == str(cat.network("acme").dns_address)
        own = cat.peer(peer).address
    # The gateway's DNS server starts listening when the peer appears; give it (and the handshake) time.
    until(lambda: dig(lab, "laptop-alice", server, "dnsl-web.internal", "AAAA", "+short").stdout.split() != [])
    assert short(lab, "laptop-alice", "dnsl-web.internal", "AAAA", server) == sorted([gru.address, sjc.address])
    assert short(lab, "laptop-alice", "gru.dnsl-web.internal", "AAAA", server) == [gru.address]
    assert vms(lab, "laptop-alice", server) == {f"{gru.id} gru", f"{sjc.id} sjc"}
    assert short(lab, "laptop-alice", f"{sjc.id}.vm.dnsl-web.internal", "AAAA", server) == [sjc.address]
    assert status(lab, "laptop-alice", "dnsl-gx.internal", "AAAA", server) == "NXDOMAIN"
    assert short(lab, "laptop-alice", f"{peer}._peer.internal", "AAAA", server) == [own]
    # And with no server given: wg-quick's DNS= line went into the laptop's resolv.conf.
    assert short(lab, "laptop-alice", "dnsl-web.internal") == sorted([gru.address, sjc.address])


def test_stopped_machine_leaves_the_app_name(lab: Lab, apps: tuple[list[Machine], Machine]) -> None:
    (gru, sjc), _ = apps
    asker = gru.id
    try:
        sixpn(lab, "machines", "stop", sjc.id, "--lab", lab.lab_id)
        gone_after = until(lambda: short(lab, asker, "dnsl-web.internal") == [gru.address])
        print(f"stopped machine left dnsl-web.internal {gone_after * 1000:.0f} ms after `machines stop` returned")
    finally:
        sixpn(lab, "machines", "start", sjc.id, "--lab", lab.lab_id, check=False)
    back_after = until(lambda: short(lab, asker, "dnsl-web.internal") == sorted([gru.address, sjc.address]))
    print(f"restarted machine back in dnsl-web.internal {back_after * 1000:.0f} ms after `machines start` returned")
