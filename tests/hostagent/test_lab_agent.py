"""The host agent in the lab, checked with the real tools: the catalog's rows, `dig` from another machine, `curl`
through the edge, /proc (pids, start times, uids, namespaces), the agent's own log. Exits are SIGKILLs sent
from outside (`Machines.kill`); every wait polls its condition with a deadline."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from catalog import Machine
from netns_lab.lab import Lab
from netns_lab.machines import Machines
from tests.conftest import MakeApp

pytestmark = pytest.mark.lab

WEB = {"http_service": {"internal_port": 8080}}
ANYCAST = "192.0.2.1"


def until(what: str, check: Callable[[], object], timeout: float = 10.0, every: float = 0.01) -> float:
    """Seconds until `check()` is truthy; fails the test after `timeout`."""
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < timeout, f"not within {timeout}s: {what}"
        time.sleep(every)
    return time.monotonic() - t0


def row(lab: Lab, machine_id: str) -> Machine:
    with lab.catalog() as cat:
        return cat.machine(machine_id)


def aaaa(lab: Lab, node: str, name: str) -> set[str]:
    out = lab.exec(node, ["dig", "+short", "+time=1", "+tries=1", "AAAA", name]).stdout
    return {line.strip() for line in out.splitlines() if ":" in line}


def app_pid(lab: Lab, machine_id: str) -> int:
    """The app's own process (host pid): bwrap -> its pid 1 in the new PID namespace -> the app (/proc only)."""
    pid = Machines(lab).pid(machine_id)
    assert pid is not None
    for _ in range(2):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        assert children, f"no child under {pid}"
        pid = int(children[0])
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"netns_lab.sampleapp" in argv and not argv[0].endswith(b"bwrap"), argv
    return pid


def status_fields(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


# -- exits and the restart policy --------------------------------------------------------------------


def test_killed_app_policy_no_leaves_the_catalog_and_dns_within_a_second(lab: Lab, lab_app: MakeApp) -> None:
    config = {**WEB, "restart": [{"policy": "no"}]}
    victim, witness = lab_app("agno", count=2, regions=["gru", "gig"], config=config)
    name = "agno.internal"
    until("both in DNS", lambda: aaaa(lab, witness.id, name) == {victim.address, witness.address})
    t0 = time.monotonic()
    Machines(lab).kill(victim.id)
    in_catalog = until("reported stopped", lambda: row(lab, victim.id).state == "stopped", every=0.002)
    until("gone from dig", lambda: victim.address not in aaaa(lab, witness.id, name), every=0.0)
    total = time.monotonic() - t0
    print(f"\nkill -> catalog {in_catalog * 1000:.0f} ms; kill -> gone from dig in gig {total * 1000:.0f} ms")
    assert in_catalog < 1.0 and total < 1.0  # both within a second of the kill
    got = row(lab, victim.id)
    assert (got.desired, got.state, got.exit_code, got.restarts) == ("started", "stopped", -9, 0)
    time.sleep(0.3)  # nothing may restart it: policy "no" (a bounded look, not a synchronization)
    assert row(lab, victim.id).state == "stopped" and Machines(lab).pid(victim.id) is None


def test_killed_app_policy_always_is_restarted_and_counted(lab: Lab, lab_app: MakeApp) -> None:
    config = {**WEB, "restart": [{"policy": "always"}]}
    victim, witness = lab_app("agalways", count=2, regions=["sjc", "gig"], config=config)
    machines = Machines(lab)
    old = machines.pid(victim.id)
    t0 = time.monotonic()
    machines.kill(victim.id)
    exit_seen = until("the exit reported", lambda: row(lab, victim.id).exit_code == -9, every=0.002)
    started = until("restarted and reported started",
                    lambda: (r := row(lab, victim.id)).state == "started" and r.restarts == 1, every=0.005)
    in_dns = until("back in DNS", lambda: victim.address in aaaa(lab, witness.id, "agalways.internal"), every=0.0)
    print(f"\nkill -> exit in the catalog {exit_seen * 1000:.0f} ms; -> restarted, reported started "
          f"{(time.monotonic() - t0 - in_dns) * 1000:.0f} ms (the app's own start); -> back in dig {in_dns * 1000:.0f} "
          "ms later")
    assert exit_seen < 1.0 and in_dns < 1.0
    assert started < 10.0
    new = machines.pid(victim.id)
    assert new is not None and new != old
    out = lab.exec(victim.host, ["curl", "-s", "-m", "5", f"http://[{victim.address}]:8080/healthz"])
    assert out.stdout == "ok\n"


@contextlib.contextmanager
def raw_machine(lab: Lab, app: str, config: dict[str, object], host: str) -> Iterator[Machine]:
    """A machine written straight to the catalog (no waiting for `started`: it may never be); removed after."""
    with lab.catalog() as cat:
        cat.create_app(app, "acme", config=config)
        machine = cat.create_machine(app, host, desired="started")
    try:
        yield machine
    finally:
        Machines(lab).remove([machine])
        with lab.catalog() as cat:
            cat.delete_app(app)


def test_on_failure_stops_after_the_retry_limit(lab: Lab) -> None:
    config = {**WEB, "processes": {"app": "exit 3"}, "restart": [{"policy": "on-failure", "retries": 2}]}
    with raw_machine(lab, "agretry", config, "worker-gig") as m:
        until("two restarts, then left stopped",
              lambda: (r := row(lab, m.id)).restarts == 2 and r.state == "stopped", timeout=20)
        time.sleep(0.5)  # a bounded look: no third restart comes (backoff after two is 0.4 s)
        got = row(lab, m.id)
        assert (got.state, got.restarts, got.exit_code, got.desired) == ("stopped", 2, 3, "started")
        log = (lab.logs_dir / "worker-gig.agent.log").read_text()
        assert f"{m.id}: left stopped: exited with 3 after 2 restarts (on-failure, retries=2)" in log


def test_a_machine_created_stopped_is_built_and_started_on_request(lab: Lab) -> None:
    with lab.catalog() as cat:
        cat.create_app("agidle", "acme", config=WEB)
        m = cat.create_machine("agidle", "worker-sjc", desired="stopped")
    try:
        until("reported stopped", lambda: row(lab, m.id).state == "stopped")
        assert Path("/run/netns", lab.plan.machine_ns(m.id)).exists() and Machines(lab).pid(m.id) is None
        assert Machines(lab).start(m.id).state == "started"
        out = lab.exec(m.host, ["curl", "-s", "-m", "5", f"http://[{m.address}]:8080/healthz"])
        assert out.stdout == "ok\n"
    finally:
        Machines(lab).remove([m])
        with lab.catalog() as cat:
            cat.delete_app("agidle")
    assert not Path("/run/netns", lab.plan.machine_ns(m.id)).exists()  # the row gone: torn down


def test_on_failure_does_not_restart_a_clean_exit(lab: Lab) -> None:
    config = {**WEB, "processes": {"app": "exit 0"}}  # no [[restart]]: Fly's default, on-failure
    with raw_machine(lab, "agclean", config, "worker-sjc") as m:
        until("left stopped", lambda: (r := row(lab, m.id)).state == "stopped" and r.exit_code == 0, timeout=20)
        assert row(lab, m.id).restarts == 0


# -- the agent restarted -------------------------------------------------------------------------------


def test_killed_agent_adopts_its_machines_and_no_request_fails(lab: Lab, lab_app: MakeApp) -> None:
    machines = lab_app("agadopt", count=2, regions=["gru"], config=WEB)
    tool = Machines(lab)
    before = {m.id: (tool.pid(m.id), app_pid(lab, m.id)) for m in machines}
    until("served through the edge", lambda: "agadopt" in lab.exec("client-gru", [
        "curl", "-s", "-m", "5", "-H", "Host: agadopt.sixpn.test", f"http://{ANYCAST}/"]).stdout)
    loop = ("ok=0; bad=0; for i in $(seq 300); do c=$(curl -s -o /dev/null -m 5 -w '%{http_code}' "
            f"-H 'Host: agadopt.sixpn.test' http://{ANYCAST}/); "
            "if [ \"$c\" = 200 ]; then ok=$((ok+1)); else bad=$((bad+1)); fi; done; echo $ok $bad")
    with subprocess.Popen(lab.exec_argv("client-gru", ["sh", "-c", loop]), stdout=subprocess.PIPE, text=True) as load:
        try:
            log = lab.logs_dir / "worker-gru.agent.log"
            agent = lab.run_dir / "pids" / "worker-gru.agent.pid"
            old = int(agent.read_text())
            os.kill(old, signal.SIGKILL)  # no goodbye: the supervisor starts a new agent
            until("a new agent", lambda: agent.exists() and agent.read_text().strip() not in ("", str(old)))
            for m in machines:
                line = f"{m.id}: adopted pid {before[m.id][0]}"
                until("adopted", lambda line=line: line in log.read_text())  # type: ignore[misc]
            out, _ = load.communicate(timeout=120)
        finally:
            if load.poll() is None:
                load.kill()
    ok, bad = (int(x) for x in out.split())
    print(f"\nagent restarted under load: {ok} requests ok, {bad} failed")
    assert (ok, bad) == (300, 0)
    for m in machines:
        assert (tool.pid(m.id), app_pid(lab, m.id)) == before[m.id]  # same sandbox, same app process
        got = row(lab, m.id)
        assert (got.state, got.restarts) == ("started", 0)
    # Still watched by the new agent: an exit is noticed at once.
    tool.kill(machines[0].id)
    until("the adopted machine's exit reported", lambda: row(lab, machines[0].id).exit_code == -9)


# -- confinement (issue 15, leak 3) ------------------------------------------------------------------


def test_a_machine_cannot_see_the_hosts_keys_or_other_machines(lab: Lab, lab_app: MakeApp) -> None:
    (acme,) = lab_app("agjail", count=1, regions=["gru"], config=WEB)
    (globex,) = lab_app("agother", org="globex", count=1, regions=["gru"], config=WEB)
    key = lab.run_dir / "keys" / "worker-gru.key"
    assert key.exists() and Path("/run/netns", lab.plan.machine_ns(globex.id)).exists()  # there to be taken

    def inside(*argv: str) -> subprocess.CompletedProcess[str]:
        return lab.app_exec(acme.id, list(argv), timeout=30)

    assert inside("cat", str(key)).returncode != 0
    assert inside("ls", str(lab.run_dir / "keys")).returncode != 0
    assert inside("ls", str(lab.state_dir)).returncode != 0  # the catalog
    assert inside("ls", "/var/run/wireguard").returncode != 0  # WireGuard UAPI sockets
    assert inside("ls", "/run/netns").returncode != 0
    entered = inside("ip", "netns", "exec", lab.plan.machine_ns(globex.id), "true")
    assert entered.returncode != 0, entered.stdout
    assert inside("nsenter", "--net=/proc/1/ns/net", "true").returncode != 0
    assert inside("touch", "/usr/pwned").returncode != 0 and not Path("/usr/pwned").exists()
    assert inside("id", "-u").stdout.strip() != "0"
    # Its own PID namespace: only the sandbox's few processes, none of the host's.
    pids = [p for p in inside("ls", "/proc").stdout.split() if p.isdigit()]
    assert 1 <= len(pids) <= 6, pids
    assert "host agent" not in inside("cat", "/proc/1/cmdline").stdout
    # The app itself, seen from the host through /proc: unprivileged, no capabilities, a nested PID namespace,
    # another mount namespace.
    pid = app_pid(lab, acme.id)
    fields = status_fields(pid)
    assert fields["Uid"].split()[0] != "0" and fields["Gid"].split()[0] != "0"
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0
    assert fields["NoNewPrivs"] == "1"
    assert len(fields["NSpid"].split()) == 2  # a pid on the host and one in its own namespace
    assert Path(f"/proc/{pid}/ns/mnt").readlink() != Path("/proc/self/ns/mnt").readlink()
    assert Path(f"/proc/{pid}/ns/pid").readlink() != Path("/proc/self/ns/pid").readlink()
    # Two machines on one worker do not share a uid.
    assert status_fields(app_pid(lab, globex.id))["Uid"].split()[0] != fields["Uid"].split()[0]


# -- checks ------------------------------------------------------------------------------------------


def test_checks_run_by_the_agent_publish_health(lab: Lab, lab_app: MakeApp) -> None:
    good = {"http_service": {"internal_port": 8080, "checks": [{"interval": "1s", "timeout": "1s",
                                                                 "path": "/healthz"}]}}
    bad = {"processes": {"app": "exec python3 -m http.server --bind :: 8080"},
           "http_service": {"internal_port": 8080, "checks": [{"interval": "1s", "timeout": "1s", "path": "/nope"}],
                            "tcp_checks": [{"interval": "1s", "timeout": "1s"}]}}
    (ok,) = lab_app("aghealthy", count=1, regions=["gig"], config=good)
    (sick,) = lab_app("agsick", count=1, regions=["gig"], config=bad)
    until("passing", lambda: row(lab, ok.id).health == "passing")
    until("critical (404 on the check's path)", lambda: row(lab, sick.id).health == "critical")
    Machines(lab).stop(ok.id)
    assert row(lab, ok.id).health == ""  # a stopped machine has no health


def test_stop_kills_an_app_that_ignores_sigterm_after_the_grace(lab: Lab, lab_app: MakeApp) -> None:
    stubborn = {"processes": {"app": "trap '' TERM; exec python3 -m http.server --bind :: 8080"},
                "http_service": {"internal_port": 8080}}
    (m,) = lab_app("agstubborn", count=1, regions=["gig"], config=stubborn)
    t0 = time.monotonic()
    assert Machines(lab).stop(m.id).state == "stopped"
    took = time.monotonic() - t0
    assert 4.5 < took < 10.0, took  # SIGTERM ignored, SIGKILL after the agent's 5 s grace
    assert row(lab, m.id).exit_code == -9
    assert "still running 5s after SIGTERM: SIGKILL" in (lab.logs_dir / "worker-gig.agent.log").read_text()
