"""Fresh labs (not the shared one): `down` leaves nothing, a killed `up` is cleaned, two labs coexist.
Driven through the CLI (`sixpn lab ...`), checked with ip, nft and /proc."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netns_lab.lab import Lab
from netns_lab.system import MARKER_ENV
from tests.conftest import lab_id

A, B, C = lab_id("a"), lab_id("b"), lab_id("c")

pytestmark = pytest.mark.lab


def sixpn(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sixpn.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def traces(lab_id: str) -> list[str]:
    """Everything of lab `lab_id` still visible to ip, nft, /etc/netns, /run and the process list."""
    found = [f"netns {n}" for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
             .stdout.split() if n.startswith(f"{lab_id}-")]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found += [f"link {line}" for line in links.splitlines() if f"{lab_id}-" in line or f"{lab_id}wg" in line]
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    found += [f"nft {t}" for t in tables.splitlines() if t.split()[-1].startswith(lab_id)]
    found += [f"etc {p}" for p in Path("/etc/netns").glob(f"{lab_id}-*")]
    found += [f"wg {p}" for p in Path("/var/run/wireguard").glob(f"{lab_id}wg*.sock")]
    if Path("/run/sixpn-lab", lab_id).exists():
        found.append("run dir")
    needle = f"{MARKER_ENV}={lab_id}".encode()
    run_dir = f"/run/sixpn-lab/{lab_id}/".encode()
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in environ or run_dir in cmdline:
            found.append(f"process {pid} {cmdline[:80]!r}")
    return found


@pytest.fixture
def cleanup() -> Iterator[list[str]]:
    ids: list[str] = []
    try:
        yield ids
    finally:
        for lab_id in ids:
            Lab.down(lab_id)


def test_two_labs_coexist_and_down_leaves_nothing(cleanup: list[str]) -> None:
    cleanup += [A, B]
    out = sixpn("lab", "up", "--lab", A)  # through the CLI, with the hosts' services
    assert out.returncode == 0, out.stderr
    lab_b = Lab.up(None, B, host_services=False, owner_pid=os.getpid())  # through the API, bare
    lab_a = Lab(A)
    status = json.loads(sixpn("lab", "status", "--json", "--lab", A).stdout)
    assert status["lab"] == A and status["supervisor_pid"]
    for lab in (lab_a, lab_b):
        assert lab.exec("client-gru", ["ping", "-c1", "-W2", "198.51.100.66"]).returncode == 0
        # The laptop has its own resolv.conf view, so wg-quick's resolvconf never touches the real one.
        assert (Path("/etc/netns") / lab.netns_of("laptop-alice") / "resolv.conf").is_file()
    out = sixpn("lab", "down", "--lab", A)
    assert out.returncode == 0, out.stderr
    assert traces(A) == []
    assert lab_b.exec("client-sjc", ["ping", "-c1", "-W2", "192.0.2.1"]).returncode == 0  # the other lab is untouched
    assert Lab.down(B) != []
    assert traces(B) == []
    assert Lab.down(B) == []  # idempotent: nothing left to find


def test_down_cleans_what_a_killed_up_left(cleanup: list[str]) -> None:
    cleanup.append(C)
    proc = subprocess.Popen([sys.executable, "-m", "sixpn.cli", "lab", "up", "--lab", C],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not Path(f"/run/sixpn-lab/{C}/supervisor.pid").exists():  # killed once its supervisor runs
            assert time.monotonic() < deadline and proc.poll() is None, "lab up did not get far"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # A stray process in a lab namespace, as a test or user would leave one.
    stray = subprocess.Popen(["ip", "netns", "exec", f"{C}-client-gru", "sleep", "300"])
    try:
        time.sleep(0.2)
        assert traces(C) != []
        out = sixpn("lab", "down", "--lab", C)
        assert out.returncode == 0, out.stderr
        stray.wait(10)
        assert traces(C) == []
    finally:
        stray.kill()
        stray.wait()


def test_cli_errors_are_one_line() -> None:
    out = sixpn("lab", "status", "--lab", "zq")
    assert out.returncode == 1
    assert out.stderr.startswith("sixpn: lab zq is not up") and out.stderr.count("\n") == 1
    bad = sixpn("lab", "down", "--lab", "TOOLONG")
    assert bad.returncode == 1 and "lab id" in bad.stderr


def test_labs_of_dead_sessions_are_removed(cleanup: list[str]) -> None:
    ghost = subprocess.Popen(["true"])  # a pid that has exited: the "session" is gone
    ghost.wait()
    lab_d = lab_id("d")
    cleanup.append(lab_d)
    Lab.up(None, lab_d, host_services=False, owner_pid=ghost.pid)
    assert lab_d in Lab.down_orphans()
    assert traces(lab_d) == []
