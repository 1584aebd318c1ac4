"""The user's journey, as `make demo` runs it: it must exit 0, show every step holding, and leave nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.lab

STEPS = (
    "lab up", "apps and machines", "anycast from each region", ".internal DNS from a machine",
    "a write in gru, seen in sjc's DNS", "laptop joins over WireGuard", "machine stopped, traffic fails over",
)


@pytest.fixture
def demo_lab_id() -> str:
    return f"d{os.getpid() % 1000:03d}"


def _leftovers(lab_id: str) -> list[str]:
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    procs = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    return [n for n in namespaces if n.startswith(f"{lab_id}-")] + [
        p for p in procs if f"/sixpn-lab/{lab_id}/" in p or f"{lab_id}wg" in p
    ]


def test_demo_journey_holds_and_cleans_up(demo_lab_id: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("the demo needs root")
    done = subprocess.run(
        [sys.executable, "-m", "sixpn.cli", "demo", "--lab", demo_lab_id],
        capture_output=True, text=True, timeout=600,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    for number, title in enumerate(STEPS, start=1):
        assert f"[{number}] {title}" in out
    assert "FAILED" not in out
    assert "each client served in its own region" in out
    assert "globex unreachable" in out
    assert "client-gru served from gig" in out
    assert _leftovers(demo_lab_id) == []
    assert not os.path.exists(f"/run/sixpn-lab/{demo_lab_id}")
