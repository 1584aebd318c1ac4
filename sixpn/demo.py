"""`sixpn demo`: the user's journey through a three-region lab, one readable line per step.

Every check uses the real tools a user would (`curl`, `dig`, `wg-quick`, `ping`) inside the lab's
namespaces; sixpn's own commands are only used to set things up. Whatever happens, the lab is torn down
unless `--keep` is given.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from netns_lab.lab import Lab

ANYCAST = "192.0.2.1"
REGIONS = ("gru", "gig", "sjc")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class DemoError(Exception):
    """A step did not hold; the message says what was expected and what was seen."""


@dataclass
class Step:
    number: int
    title: str
    detail: str = ""
    figure: str = ""
    ok: bool = False


@dataclass
class Journey:
    lab_id: str
    keep: bool = False
    topology: Path = EXAMPLES / "three-regions.toml"
    steps: list[Step] = field(default_factory=list)
    lab: Lab | None = None
    conf: Path | None = None
    machines: dict[str, str] = field(default_factory=dict)  # region -> web machine id
    started: float = field(default_factory=time.monotonic)

    # -- plumbing -------------------------------------------------------------------------------

    def sixpn(self, *argv: str) -> str:
        assert self.lab is not None
        env = {**os.environ, **self.lab.env()}  # the operator's seat: SIXPN_CONFIG (and SIXPN_STATE if embedded)
        done = subprocess.run([sys.executable, "-m", "sixpn.cli", *argv], capture_output=True, text=True,
                              env=env, timeout=120)
        if done.returncode != 0:
            raise DemoError(f"`sixpn {' '.join(argv)}` failed: {done.stderr.strip()}")
        return done.stdout

    def run(self, node: str, argv: Sequence[str], timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        assert self.lab is not None
        return self.lab.exec(node, list(argv), timeout=timeout)

    def curl_json(self, node: str, url: str, host: str | None = None) -> tuple[dict[str, object], float]:
        argv = ["curl", "-sS", "--max-time", "5", "-w", "\n%{http_code} %{time_total}", url]
        if host:
            argv[1:1] = ["-H", f"Host: {host}"]
        done = self.run(node, argv)
        body, _, tail = done.stdout.rpartition("\n")
        status, _, seconds = tail.partition(" ")
        if done.returncode != 0 or status != "200":
            raise DemoError(f"curl {url} from {node}: status {status or '-'} {done.stderr.strip()}")
        return json.loads(body), float(seconds) * 1000

    def _served(self, node: str) -> str:
        body, ms = self.curl_json(node, "http://web.internal:8080/")
        return json.dumps({"region": body.get("region"), "ms": ms})

    def until(self, what: str, probe: Callable[[], str | None], timeout: float = 30.0) -> str:
        """Retry probe until it returns a non-None result; its last failure becomes the error."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            try:
                result = probe()
                if result is not None:
                    return result
            except DemoError as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise DemoError(f"{what}: not within {timeout:.0f} s ({last or 'no answer'})")
            time.sleep(0.3)

    def step(self, title: str, action: Callable[[Step], None]) -> None:
        step = Step(len(self.steps) + 1, title)
        self.steps.append(step)
        t0 = time.monotonic()
        action(step)
        step.ok = True
        step.figure = step.figure or f"{time.monotonic() - t0:.1f} s"
        print(f"[{step.number}] {title:<36} {step.detail}  ({step.figure})", flush=True)

    # -- the journey ----------------------------------------------------------------------------

    def lab_up(self, step: Step) -> None:
        t0 = time.monotonic()
        # The demo runs the lab as a fleet: a NATS server per region, a replica of the catalog on every host.
        self.lab = Lab.up(self.topology, self.lab_id, wait_ready=True, catalog="replicated")
        nodes = len(self.lab.status().get("nodes", []))
        step.detail = f"lab {self.lab_id}: {nodes} nodes in gru, gig, sjc; anycast {ANYCAST}; catalog on 3 NATS servers"
        step.figure = f"{time.monotonic() - t0:.1f} s"

    def apps(self, step: Step) -> None:
        self.sixpn("apps", "create", "web", "--org", "acme", "--config", str(EXAMPLES / "web.fly.toml"))
        self.sixpn("apps", "create", "intranet", "--org", "globex")
        self.sixpn("scale", "count", "3", "--app", "web", "--region", ",".join(REGIONS))
        self.sixpn("scale", "count", "1", "--app", "intranet", "--region", "gru")
        assert self.lab is not None
        rows = self.lab.catalog().snapshot().machines.values()
        self.machines = {m.region: m.id for m in rows if m.app == "web"}
        if sorted(self.machines) != sorted(REGIONS):
            raise DemoError(f"web machines are in {sorted(self.machines)}, expected {list(REGIONS)}")
        step.detail = "acme/web x3 (gru, gig, sjc), globex/intranet x1 (gru), all started"

    def anycast(self, step: Step) -> None:
        figures = []
        for region in REGIONS:
            def served_locally(region: str = region) -> str | None:
                body, ms = self.curl_json(f"client-{region}", f"http://{ANYCAST}/", "web.sixpn.test")
                seen = str(body.get("region"))
                if seen != region:
                    raise DemoError(f"client-{region} was served from {seen}")
                return f"{region}->{seen}:{str(body.get('machine_id'))[:6]} {ms:.0f}ms"

            figures.append(self.until(f"client-{region} served in its region", served_locally, timeout=45))
        step.detail = "each client served in its own region"
        step.figure = ", ".join(figures)

    def dns(self, step: Step) -> None:
        node = self.machines["gru"]
        answers = {}
        for name, rtype in (("web.internal", "AAAA"), ("gru.web.internal", "AAAA"), ("vms.web.internal", "TXT")):
            done = self.run(node, ["dig", "+short", "+time=2", "+tries=2", rtype, name])
            lines = [line.strip('"') for line in done.stdout.split()]
            answers[name] = lines
        if len(answers["web.internal"]) != 3 or len(answers["gru.web.internal"]) != 1:
            raise DemoError(f"dig from an acme machine gave {answers}")
        vms = ",".join(answers["vms.web.internal"])
        if not all(mid in vms for mid in self.machines.values()):
            raise DemoError(f"vms.web.internal TXT lacks a machine: {vms}")
        step.detail = "dig from acme machine: web.internal 3 AAAA, gru.web.internal 1 AAAA, vms TXT 3"
        step.figure = f"gru.web.internal = {answers['gru.web.internal'][0]}"

    def replication(self, step: Step) -> None:
        """A catalog write through the cluster (its stream leader is in gru), timed until the DNS server of
        another region answers from it: a `dig` loop in the sjc machine stamps the first answer."""
        assert self.lab is not None
        gru, sjc = self.machines["gru"], self.machines["sjc"]
        token = secrets.token_hex(4)
        name = f"{token}.demo.kv._metadata.web.internal"
        loop = (f"end=$(($(date +%s)+15)); while [ $(date +%s) -lt $end ]; do "
                f"a=$(dig +short +time=1 +tries=1 AAAA {name}); "
                f'if [ -n "$a" ]; then date +%s.%N; echo "$a"; exit 0; fi; done; exit 1')
        probe = subprocess.Popen(self.lab.exec_argv(sjc, ["sh", "-c", loop]), stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True)
        try:
            time.sleep(0.5)  # the loop is asking (and getting NXDOMAIN) before the write
            with self.lab.catalog() as cat:
                machine = cat.machine(gru)
                written = time.time()
                cat.set_machine_metadata(gru, {**machine.metadata, "demo": token})
            out, _ = probe.communicate(timeout=30)
        finally:
            if probe.poll() is None:
                probe.kill()
        lines = out.split()
        if probe.returncode != 0 or len(lines) < 2 or lines[1] != machine.address:
            raise DemoError(f"{name} never answered {machine.address} in sjc (saw {lines[1:] or 'nothing'})")
        delay = (float(lines[0]) - written) * 1000
        one_way = self.lab.regions.rtt("gru", "sjc") / 2
        step.detail = "metadata written via the cluster; sjc's DNS answers the _metadata name"
        step.figure = f"write -> sjc dig {delay:.0f} ms, one-way RTT gru-sjc {one_way:.0f} ms"

    def laptop(self, step: Step) -> None:
        assert self.lab is not None
        self.conf = self.lab.run_dir / f"{self.lab_id}laptop.conf"
        self.sixpn("wg", "create", "acme", "gru", "alice", str(self.conf))
        if self.conf.stat().st_mode & 0o077:
            raise DemoError(f"{self.conf} is readable by others")
        if not (Path("/etc/netns") / self.lab.netns_of("laptop-alice") / "resolv.conf").exists():
            raise DemoError("the lab gave laptop-alice no resolv.conf view; wg-quick would rewrite the real one")
        done = self.run("laptop-alice", ["wg-quick", "up", str(self.conf)])
        if done.returncode != 0:
            raise DemoError(f"wg-quick up: {done.stderr.strip().splitlines()[-1:]}")
        resolved = self.until("web.internal from the laptop", lambda: self.run(
            "laptop-alice", ["dig", "+short", "+time=2", "AAAA", "web.internal"]).stdout.strip() or None)
        served = json.loads(self.until("curl web.internal from the laptop", lambda: self._served("laptop-alice")))
        globex = self.lab.catalog().snapshot().machines_of("intranet")[0].address
        ping = self.run("laptop-alice", ["ping", "-c", "2", "-W", "1", globex])
        probe = self.run("laptop-alice", ["curl", "-sS", "--max-time", "2", f"http://[{globex}]:8080/"])
        if ping.returncode == 0 or probe.returncode == 0:
            raise DemoError(f"the acme laptop reached globex's machine {globex}")
        step.detail = (f"wg-quick up; web.internal -> {len(resolved.split())} AAAA; curl served by "
                       f"{served['region']}; globex unreachable")
        step.figure = f"{served['ms']:.0f} ms"

    def failover(self, step: Step) -> None:
        gru = self.machines["gru"]
        self.sixpn("machines", "stop", gru)

        def from_gig() -> str | None:
            body, ms = self.curl_json("client-gru", f"http://{ANYCAST}/", "web.sixpn.test")
            return f"{ms:.0f} ms" if body.get("region") == "gig" else None

        figure = self.until("client-gru served from gig", from_gig, timeout=20)
        self.sixpn("machines", "start", gru)

        def back_home() -> str | None:
            body, _ = self.curl_json("client-gru", f"http://{ANYCAST}/", "web.sixpn.test")
            return "ok" if body.get("region") == "gru" else None

        self.until("client-gru served from gru again", back_home, timeout=30)
        step.detail = "gru machine stopped: client-gru served from gig; started again: back to gru"
        step.figure = f"via gig {figure}"

    def teardown(self) -> None:
        if self.lab is not None and self.conf is not None and self.conf.exists():
            self.run("laptop-alice", ["wg-quick", "down", str(self.conf)])
        Lab.down(self.lab_id)


def run(lab_id: str, keep: bool = False) -> int:
    journey = Journey(lab_id=lab_id, keep=keep)
    plan: list[tuple[str, Callable[[Step], None]]] = [
        ("lab up", journey.lab_up),
        ("apps and machines", journey.apps),
        ("anycast from each region", journey.anycast),
        (".internal DNS from a machine", journey.dns),
        ("a write in gru, seen in sjc's DNS", journey.replication),
        ("laptop joins over WireGuard", journey.laptop),
        ("machine stopped, traffic fails over", journey.failover),
    ]
    failed: str | None = None
    try:
        for title, action in plan:
            journey.step(title, action)
    except Exception as exc:  # every failure is reported, then the lab is torn down
        step = journey.steps[-1] if journey.steps else Step(0, "start")
        failed = f"step {step.number} ({step.title}) failed: {exc}"
        print(f"[{step.number}] {step.title:<36} FAILED: {exc}", flush=True)
        print(f"    logs: {Path('/run/sixpn-lab') / lab_id / 'logs'}", flush=True)
    finally:
        if keep and failed is None:
            print(f"[-] lab {lab_id} kept: eval $(sixpn lab env --lab {lab_id}); sixpn lab down --lab {lab_id}")
        else:
            t0 = time.monotonic()
            journey.teardown()
            print(f"[{len(journey.steps) + 1}] {'teardown':<36} lab {lab_id} removed  ({time.monotonic() - t0:.1f} s)")
    _summary(journey)
    if failed:
        print(f"demo FAILED: {failed}", file=sys.stderr)
        return 1
    return 0


def _summary(journey: Journey) -> None:
    print()
    print(f"{'step':<5} {'what':<36} {'result':<7} figure")
    for step in journey.steps:
        print(f"{step.number:<5} {step.title:<36} {'ok' if step.ok else 'FAILED':<7} {step.figure}")
    print(f"{'-':<5} {'teardown':<36} {'kept' if journey.keep else 'ok':<7} nothing of the lab left")
    print(f"total {time.monotonic() - journey.started:.1f} s")
