"""Machines in the lab, checked with curl, getent and the catalog's rows."""

from __future__ import annotations

import json
import time

import pytest

from catalog import Machine
from netns_lab.lab import Lab
from netns_lab.machines import Machines

pytestmark = pytest.mark.lab


def curl_machine(lab: Lab, m: Machine, path: str = "/") -> tuple[int, str]:
    out = lab.exec(m.host, ["curl", "-s", "-m", "5", f"http://[{m.address}]:8080{path}"])
    return out.returncode, out.stdout


def test_machines_spread_and_answer_on_their_6pn_address(lab: Lab, lab_app) -> None:  # type: ignore[no-untyped-def]
    machines = lab_app("hello", count=3, regions=["gru", "gig", "sjc"])
    assert sorted(m.region for m in machines) == ["gig", "gru", "sjc"]
    for m in machines:
        assert m.state == "started"
        code, body = curl_machine(lab, m)
        assert code == 0, body
        doc = json.loads(body)
        assert (doc["region"], doc["machine_id"], doc["app"], doc["private_ip"]) == (m.region, m.id, "hello", m.address)
    m = machines[0]
    env = lab.exec(m.id, ["sh", "-c", "cat /etc/resolv.conf; getent hosts fly-local-6pn; ip -6 route show default"])
    assert "nameserver fdaa::3" in env.stdout
    assert f"{m.address}" in env.stdout.split("fly-local-6pn")[0]
    assert "default via" in env.stdout
    with lab.catalog() as cat:
        assert {x.id: x.state for x in cat.snapshot().machines.values() if x.app == "hello"} == {
            x.id: "started" for x in machines}


def test_scale_down_stops_and_unregisters(lab: Lab, lab_app) -> None:  # type: ignore[no-untyped-def]
    machines = lab_app("shrink", count=2, regions=["gru"])
    assert len(machines) == 2
    result = Machines(lab).scale("shrink", 1, ["gru"])
    assert len(result.removed) == 1 and not result.added
    gone = result.removed[0]
    with lab.catalog() as cat:
        assert gone.id not in cat.snapshot().machines
    assert lab.exec("worker-gru", ["ip", "netns", "list"]).stdout.count(gone.id) == 0


def test_killed_app_is_reported_stopped_and_start_brings_it_back(  # type: ignore[no-untyped-def]
        lab: Lab, lab_app) -> None:
    config = {"http_service": {"internal_port": 8080}, "restart": [{"policy": "no"}]}
    (m,) = lab_app("faulty", count=1, regions=["sjc"], config=config)
    machines = Machines(lab)
    machines.kill(m.id)
    deadline = time.monotonic() + 5
    while True:  # the host agent notices the exit and reports it; policy "no" leaves it stopped
        with lab.catalog() as cat:
            row = cat.machine(m.id)
        if row.state == "stopped":
            break
        assert time.monotonic() < deadline, row
        time.sleep(0.02)
    assert (row.desired, row.exit_code, row.restarts) == ("started", -9, 0)
    assert curl_machine(lab, m)[0] != 0
    assert machines.start(m.id).state == "started"
    assert curl_machine(lab, m, "/healthz") == (0, "ok\n")
    assert machines.stop(m.id).state == "stopped"
    assert curl_machine(lab, m)[0] != 0
    assert machines.start(m.id).state == "started"
    assert curl_machine(lab, m)[0] == 0


def test_an_apps_own_command_runs_with_the_machine_environment(  # type: ignore[no-untyped-def]
        lab: Lab, lab_app) -> None:
    who_file = lab.share_dir / "who-custom"  # the one host directory a machine's app may write to
    who_file.unlink(missing_ok=True)
    command = (f'echo "$FLY_APP_NAME $FLY_REGION $FLY_MACHINE_ID $FLY_PRIVATE_IP" > {who_file}'
               " && exec python3 -m http.server --bind :: $PORT")
    config = {"processes": {"app": command}, "http_service": {"internal_port": 8080}}
    (m,) = lab_app("custom", count=1, regions=["gig"], config=config)
    code, body = curl_machine(lab, m)
    assert code == 0 and "Directory listing" in body  # http.server, not the sample app
    try:
        assert who_file.read_text().split() == ["custom", "gig", m.id, m.address]
    finally:
        who_file.unlink(missing_ok=True)
