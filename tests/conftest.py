"""Shared fixtures for every part's tests.

- `lab`: one three-region lab (examples/three-regions.toml, id `tl`) for the whole session, with the hosts'
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
from pathlib import Path
from typing import Any

import pytest

from catalog import Machine
from netns_lab.lab import Lab
from netns_lab.machines import Machines

LAB_ID = "tl"
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
    try:
        yield Lab.up(TOPOLOGY, LAB_ID, wait_ready=True)
    finally:
        Lab.down(LAB_ID)


@pytest.fixture
def lab_run(lab: Lab) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(node: str, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return lab.exec(node, list(argv), timeout=timeout)

    return run


@pytest.fixture
def lab_app(lab: Lab) -> Iterator[Callable[..., list[Machine]]]:
    created: list[str] = []

    def make(name: str, org: str = "acme", count: int = 1, regions: list[str] | None = None,
             config: dict[str, Any] | None = None) -> list[Machine]:
        with lab.catalog() as cat:
            cat.create_app(name, org, config=DEFAULT_APP_CONFIG if config is None else config)
        created.append(name)
        return list(Machines(lab).scale(name, count, regions).added)

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


PING_AVG = re.compile(r"= [\d.]+/([\d.]+)/")


def ping_avg(lab: Lab, node: str, address: str, count: int = 5) -> float:
    """Average RTT in ms of `count` pings (after one warm-up ping for ARP/ND) from a node to an address."""
    lab.exec(node, ["ping", "-c", "1", "-W", "2", address])
    out = lab.exec(node, ["ping", "-q", "-c", str(count), "-i", "0.2", "-W", "2", address]).stdout
    match = PING_AVG.search(out)
    assert match, f"ping {address} from {node} got no reply: {out}"
    return float(match.group(1))
