"""A region cut off a lab that runs the replicated catalog: the cut region keeps serving its last state, a
write from inside it fails with one line, the rest of the fleet keeps writing, and after the heal every
host's replica holds the very same rows."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from catalog.fleetconfig import CatalogConfig, HostConfig, render_host_config
from netns_lab import fleet
from netns_lab import plan as planmod
from netns_lab.lab import Lab
from netns_lab.machines import Machines
from tests.conftest import lab_id, lab_unavailable

T = TypeVar("T")
APP = "parted"


@pytest.fixture(scope="module")
def fleet_lab() -> Iterator[Lab]:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    try:
        yield Lab.up(None, lab_id("p"), catalog="replicated", wait_ready=True, owner_pid=os.getpid())
    finally:
        Lab.down(lab_id("p"))


def _eventually(attempt: Callable[[], T], timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return attempt()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _rows(state_dir: Path) -> list[tuple[str, str, str]]:
    db = sqlite3.connect(f"file:{state_dir / 'catalog.db'}?mode=ro", uri=True)
    try:
        return [(str(k), str(key), str(d)) for k, key, d in
                db.execute("SELECT kind, key, data FROM records ORDER BY kind, key")]
    finally:
        db.close()


def _seat_inside(lab: Lab, region: str) -> Path:
    """An operator's seat inside `region` (admin credentials, that region's NATS server only)."""
    server = next(s for s in planmod.nats_cluster(lab.plan).servers if s.region == region)
    seat = lab.run_dir / f"seat-{region}"
    config = HostConfig(name=f"seat-{region}", role="operator", region=region, underlay="", state_dir=seat / "state",
                        catalog=CatalogConfig(mode="replicated", nats=(server.client_url,),
                                              credentials=fleet.operator_dir(lab.run_dir) / "admin.creds"))
    seat.mkdir(mode=0o700, exist_ok=True)
    (seat / "host.toml").write_text(render_host_config(config))
    return seat / "host.toml"


@pytest.mark.lab
def test_a_cut_region_serves_its_last_state_and_every_replica_ends_identical(fleet_lab: Lab) -> None:
    lab = fleet_lab
    with lab.catalog() as cat:
        cat.create_app(APP, "acme", config={"http_service": {"internal_port": 8080}})
    machines = Machines(lab).scale(APP, 3, ["gru", "gig", "sjc"]).added
    behind = lab.wait_replicas(timeout=30)
    assert not behind, f"replicas behind before the cut: {behind}"
    gru_machine = next(m for m in machines if m.region == "gru")
    seat = _seat_inside(lab, "gru")

    lab.cut("gru")
    try:
        # Inside the cut region: DNS and the edge answer from the replica they have.
        dig = lab.exec(gru_machine.id, ["dig", "+short", "+time=2", "+tries=2", "aaaa", f"{APP}.internal"])
        assert len(dig.stdout.split()) == 3, dig.stdout + dig.stderr
        served = _eventually(lambda: json.loads(lab.exec("client-gru", [
            "curl", "-sf", "--max-time", "3", "-H", f"Host: {APP}.sixpn.test", "http://192.0.2.1/"]).stdout), 20)
        assert served["region"] == "gru"

        # A write from inside the cut region needs the cluster's quorum: one line, non-zero, nothing written.
        started = time.monotonic()
        done = lab.exec("client-gru", [sys.executable, "-m", "sixpn.cli", "--host-config", str(seat), "orgs",
                                       "create", "cutoff"], timeout=60)
        assert done.returncode != 0 and done.stderr.startswith("sixpn: ")
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        print(f"\nwrite inside the cut region: {done.stderr.strip()} ({time.monotonic() - started:.1f} s)")

        # Outside, the operator writes through the other regions (once they have leaders of their own).
        def outside() -> int:
            with lab.catalog() as cat:
                cat.create_org("healed")
                return int(cat.replica_seq())  # type: ignore[attr-defined]  # its own replica: the write's seq

        written = _eventually(outside, 40)
    finally:
        lab.heal("gru")

    behind = lab.wait_replicas(timeout=30, at_least=written)
    assert not behind, f"replicas behind seq {written} after the heal: {behind}"
    states = {n.name: _rows(fleet.host_dir(lab.run_dir, n.name) / "state") for n in lab.plan.hosts()}
    reference = states["worker-sjc"]
    assert any(kind == "org" and key == "healed" for kind, key, _ in reference)
    assert not any(kind == "org" and key == "cutoff" for kind, key, _ in reference)
    for host, rows in states.items():
        assert rows == reference, f"{host}'s replica differs from worker-sjc's"
