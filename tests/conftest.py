"""Shared fixtures for every part's tests.

- `lab`: one three-region lab (examples/three-regions.toml, id `lab_id("l")`) for the whole session, with the hosts'
  services running (mesh agent, DNS, proxy: whichever CLI groups exist), waited for until they serve
  (bounded: `lab.not_ready` lists the ones that did not). Skipped when not root or the lab's
  tools are missing; always torn down (`Lab.down` also cleans what a crashed earlier session left).
  Tests that cut nodes or stop machines must heal/start them again (or use `lab_app`, which cleans up).
- `lab_app`: a factory `lab_app(name, org="acme", count=1, regions=None, config=None) -> list[Machine]` that
  creates an app in the lab's catalog and scales it; at teardown its machines and the app are removed.
  The default config declares `[http_service] internal_port = 8080` (the sample app's port), so the edge
  proxy may reach it through the mesh's isolation.
- `lab_run(node, *argv)`: run a command in a lab node's (or machine id's) namespace, output captured.
- Tests marked `@pytest.mark.lab` are skipped when the lab cannot run here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from catalog import Machine
from netns_lab.lab import Lab
from netns_lab.machines import Machines

#: Lab ids are unique per test session (helpers run pytest in parallel on one machine): `t` + two base-36
#: digits of the session's pid + a one-letter role. Labs of dead sessions are removed at session start.
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
SESSION = os.environ.get("SIXPN_TEST_LAB_PREFIX") or f"t{_DIGITS[os.getpid() // 36 % 36]}{_DIGITS[os.getpid() % 36]}"


def lab_id(role: str) -> str:
    """This session's id for a lab playing `role` (one letter): `lab_id("l")` is the shared lab."""
    return f"{SESSION}{role}"
TOPOLOGY = Path(__file__).resolve().parent.parent / "examples" / "three-regions.toml"
LAB_TOOLS = ("ip", "ping", "curl", "nft")
DEFAULT_APP_CONFIG: dict[str, Any] = {"http_service": {"internal_port": 8080}}


def lab_unavailable() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "lab tests need root"
    missing = [t for t in LAB_TOOLS if shutil.which(t) is None]
    if missing:
        return f"lab tests need {', '.join(missing)}"
    if not Path("/dev/net/tun").exists():
        return "lab tests need /dev/net/tun"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = lab_unavailable()
    if reason is None:
        return
    for item in items:
        if item.get_closest_marker("lab"):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    Lab.down_orphans()
    try:
        yield Lab.up(TOPOLOGY, lab_id("l"), wait_ready=True, owner_pid=os.getpid())
    finally:
        Lab.down(lab_id("l"))


@pytest.fixture
def lab_run(lab: Lab) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(node: str, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return lab.exec(node, list(argv), timeout=timeout)

    return run


MakeApp = Callable[..., list[Machine]]


@contextmanager
def app_maker(lab: Lab) -> Iterator[MakeApp]:
    """`make(name, org, count, regions, config)`: an app scaled in the lab; all of them removed at exit."""
    created: list[str] = []

    def make(name: str, org: str = "acme", count: int = 1, regions: list[str] | None = None,
             config: dict[str, Any] | None = None) -> list[Machine]:
        with lab.catalog() as cat:
            cat.create_app(name, org, config=DEFAULT_APP_CONFIG if config is None else config)
        created.append(name)
        added = list(Machines(lab).scale(name, count, regions).added)
        lab.wait_replicas()  # with the replicated catalog: every host has the machines before the test goes on
        return added

    try:
        yield make
    finally:
        machines = Machines(lab)
        for name in created:
            with lab.catalog() as cat:
                mine = [m for m in cat.snapshot().machines.values() if m.app == name]
            machines.remove(mine)
            with lab.catalog() as cat:
                cat.delete_app(name)


@pytest.fixture
def lab_app(lab: Lab) -> Iterator[MakeApp]:
    with app_maker(lab) as make:
        yield make


PING_AVG = re.compile(r"= [\d.]+/([\d.]+)/")


def ping_avg(lab: Lab, node: str, address: str, count: int = 5) -> float:
    """Average RTT in ms of `count` pings (after one warm-up ping for ARP/ND) from a node to an address."""
    lab.exec(node, ["ping", "-c", "1", "-W", "2", address])
    out = lab.exec(node, ["ping", "-q", "-c", str(count), "-i", "0.2", "-W", "2", address]).stdout
    match = PING_AVG.search(out)
    assert match, f"ping {address} from {node} got no reply: {out}"
    return float(match.group(1))
