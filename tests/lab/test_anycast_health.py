"""The anycast health check's decisions, on a fake run directory (no namespaces, no root)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from netns_lab import anycast, lab, services, topology
from netns_lab.lab import Lab


@pytest.fixture
def fake_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Lab:
    monkeypatch.setattr(lab, "RUN_ROOT", tmp_path)
    run = tmp_path / "hc"
    for sub in ("services", "stopped", "pids"):
        (run / sub).mkdir(parents=True)
    (run / "lab.json").write_text(json.dumps({"lab_id": "hc", "topology": topology.DEFAULT_TOML}))
    monkeypatch.setattr(Lab, "apply_anycast", lambda self: None)  # no backbone here
    for edge in ("edge-gru", "edge-gig", "edge-sjc"):
        (run / "services" / f"{edge}.proxy.json").write_text("{}")
        (run / "pids" / f"{edge}.proxy.pid").write_text(f"{os.getpid()}\n")  # "alive"
    return Lab("hc")


def test_withdraws_after_hold_down_and_reannounces(fake_lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    serving = {"edge-gru": False, "edge-gig": True, "edge-sjc": True}
    current = [""]
    monkeypatch.setattr(services, "listens", lambda pid, port, udp=False: serving[current[0]])
    health = anycast.EdgeHealth(fake_lab)
    real_state = health.edge_state

    def edge_state(edge: str, now: float) -> bool:
        current[0] = edge
        return real_state(edge, now)

    monkeypatch.setattr(health, "edge_state", edge_state)
    assert not health.tick(0.0)  # edge-gru never served yet: still announced
    serving["edge-gru"] = True
    assert not health.tick(1.0)
    serving["edge-gru"] = False  # it served, now it does not
    assert not health.tick(2.0)
    assert not health.tick(2.0 + anycast.HOLD_DOWN / 2)
    assert health.tick(2.0 + anycast.HOLD_DOWN)
    assert fake_lab.withdrawn_set() == {"edge-gru"}
    assert fake_lab.anycast_choice()["gru"] == "edge-gig"
    serving["edge-gru"] = True
    assert health.tick(3.0)
    assert fake_lab.withdrawn_set() == frozenset()


def test_a_stopped_proxy_withdraws_at_once_and_no_proxy_never(fake_lab: Lab) -> None:
    run = fake_lab.run_dir
    (run / "services" / "edge-sjc.proxy.json").replace(run / "stopped" / "edge-sjc.proxy.json")
    (run / "services" / "edge-gig.proxy.json").unlink()
    health = anycast.EdgeHealth(fake_lab)
    assert health.tick(0.0)
    assert fake_lab.withdrawn_set() == {"edge-sjc"}
    assert fake_lab.anycast_choice() == {"gru": "edge-gru", "gig": "edge-gig", "sjc": "edge-gru"}
