"""The lab's supervisor: one detached process per lab (`python -m netns_lab.supervisor RUN_DIR`).

Desired state is a directory of service specs, `RUN/services/<name>.json`, written by the lab API (the CLI,
the pytest fixture); the supervisor reconciles it every 50 ms: starts what is missing, stops (SIGTERM, then
SIGKILL after a grace period) what was removed, reaps and reports every death in its log and restarts
`restart = "always"` services with backoff. `restart = "never"` services (machine apps: a killed app stays
dead until `machines start`, so the proxy's health checks must notice) start again only when their spec's
`gen` changes. Each child runs in its own session via `ip netns exec NS` (so /etc/netns/NS files apply)
with its log at the spec's `log`. The running state is published in `RUN/status.json` and pid files
`RUN/pids/<name>.pid`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catalog.private import open_append
from netns_lab.system import MARKER_ENV

TICK = 0.05
GRACE = 2.0  # seconds between SIGTERM and SIGKILL
MAX_BACKOFF = 5.0
HEALTH_EVERY = 4  # ticks between anycast health checks (200 ms)


@dataclass(frozen=True)
class Spec:
    name: str
    argv: tuple[str, ...]
    netns: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    log: str = ""
    restart: str = "always"  # or "never"
    gen: int = 0
    #: Join only the network namespace (nsenter --net), keeping the host's mount namespace: for a service that
    #: creates namespaces itself (the host agent), whose `ip netns add` mounts must be seen by every process;
    #: under `ip netns exec` they would stay in its private (slave) mount namespace.
    net_only: bool = False

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Spec:
        return cls(
            name=str(doc["name"]), argv=tuple(str(a) for a in doc["argv"]),
            netns=None if doc.get("netns") is None else str(doc["netns"]),
            env=tuple(sorted((str(k), str(v)) for k, v in doc.get("env", {}).items())),
            log=str(doc.get("log", "")), restart=str(doc.get("restart", "always")), gen=int(doc.get("gen", 0)),
            net_only=bool(doc.get("net_only", False)),
        )

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "argv": list(self.argv), "netns": self.netns, "env": dict(self.env),
                "log": self.log, "restart": self.restart, "gen": self.gen, "net_only": self.net_only}


@dataclass
class Service:
    spec: Spec
    proc: subprocess.Popen[bytes] | None = None
    started_gen: int | None = None
    restarts: int = 0
    next_start: float = 0.0
    stopping_since: float | None = None
    last_exit: str = ""
    history: list[float] = field(default_factory=list)


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class Supervisor:
    def __init__(self, run_dir: Path, lab_id: str) -> None:
        self.run_dir = run_dir
        self.lab_id = lab_id
        self.spec_dir = run_dir / "services"
        self.pid_dir = run_dir / "pids"
        self.services: dict[str, Service] = {}
        self.stopping = False
        self.dirty = True
        self._specs: dict[str, Spec] = {}
        self._specs_mtime: int | None = None

    def read_specs(self) -> dict[str, Spec]:
        """The desired services; re-read only when the directory changed (every write is a rename into it,
        which bumps its mtime), so an idle lab costs one stat(2) per tick. Timestamps come from the kernel's
        coarse clock (a jiffy, 1-4 ms): two writes in one jiffy leave one mtime, so a directory changed in
        the last 200 ms is always re-read."""
        try:
            mtime = self.spec_dir.stat().st_mtime_ns
        except OSError:
            mtime = None
        settled = mtime is not None and time.time_ns() - mtime > 200_000_000
        if settled and mtime == self._specs_mtime:
            return self._specs
        self._specs_mtime = mtime
        specs = {}
        for path in self.spec_dir.glob("*.json"):
            try:
                spec = Spec.from_json(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError) as exc:
                if path.exists():
                    log(f"bad spec {path.name}: {exc}")
                continue
            specs[spec.name] = spec
        self._specs = specs
        return specs

    def start(self, svc: Service) -> None:
        spec = svc.spec
        if spec.netns and spec.net_only:
            argv = ["nsenter", f"--net=/run/netns/{spec.netns}", "--", *spec.argv]
        elif spec.netns:
            argv = ["ip", "netns", "exec", spec.netns, *spec.argv]
        else:
            argv = list(spec.argv)
        env = {**os.environ, **dict(spec.env), MARKER_ENV: self.lab_id}
        try:
            out = open_append(spec.log) if spec.log else open(os.devnull, "ab")  # noqa: SIM115 - to the child
        except OSError as exc:
            log(f"{spec.name}: cannot open log: {exc}")
            return
        with out:
            try:
                svc.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True)
            except OSError as exc:
                log(f"{spec.name}: cannot start: {exc}")
                svc.next_start = time.monotonic() + MAX_BACKOFF
                return
        svc.started_gen = spec.gen
        svc.stopping_since = None
        pid_file = self.pid_dir / f"{spec.name}.pid"
        pid_file.with_suffix(".tmp").write_text(f"{svc.proc.pid}\n")
        pid_file.with_suffix(".tmp").replace(pid_file)  # readers poll this file: never let them see it empty
        log(f"{spec.name}: started pid {svc.proc.pid}")
        self.dirty = True

    def signal(self, svc: Service, sig: int) -> None:
        if svc.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(svc.proc.pid, sig)

    def reap(self, svc: Service, now: float) -> None:
        if svc.proc is None:
            return
        code = svc.proc.poll()
        if code is None:
            return
        self.signal(svc, signal.SIGKILL)  # whatever it left in its process group goes with it
        how = describe_exit(code)
        svc.last_exit = how
        svc.proc = None
        (self.pid_dir / f"{svc.spec.name}.pid").unlink(missing_ok=True)
        self.dirty = True
        if svc.stopping_since is not None or self.stopping:
            log(f"{svc.spec.name}: stopped ({how})")
            return
        if svc.spec.restart == "always":
            svc.history = [t for t in svc.history if now - t < 30] + [now]
            backoff = min(MAX_BACKOFF, 0.25 * 2 ** (len(svc.history) - 1))
            svc.next_start = now + backoff
            svc.restarts += 1
            log(f"{svc.spec.name}: DIED ({how}); restarting in {backoff:.2f}s")
        else:
            log(f"{svc.spec.name}: DIED ({how}); not restarted (restart=never)")

    def reconcile(self) -> None:
        now = time.monotonic()
        specs = self.read_specs()
        for name, spec in specs.items():
            svc = self.services.get(name)
            if svc is None:
                svc = self.services[name] = Service(spec)
            elif svc.spec != spec and svc.proc is not None and svc.spec.argv != spec.argv:
                svc.stopping_since = svc.stopping_since or now  # a changed command: restart it
                self.signal(svc, signal.SIGTERM)
            svc.spec = spec
        for name, svc in self.services.items():
            self.reap(svc, now)
            if name not in specs:
                if svc.proc is not None and svc.stopping_since is None:
                    svc.stopping_since = now
                    self.signal(svc, signal.SIGTERM)
                continue
            if svc.proc is not None:
                if svc.stopping_since is not None and now - svc.stopping_since > GRACE:
                    self.signal(svc, signal.SIGKILL)
                continue
            wanted = svc.spec.restart == "always" or svc.started_gen != svc.spec.gen
            if wanted and now >= svc.next_start:
                self.start(svc)
        for name in [n for n, s in self.services.items() if n not in specs and s.proc is None]:
            del self.services[name]
            self.dirty = True
        if self.dirty:
            self.write_status()

    def withdrawn(self) -> list[str]:
        try:
            return [str(e) for e in json.loads((self.run_dir / "withdrawn.json").read_text())]
        except (OSError, ValueError):
            return []

    def write_status(self) -> None:
        self.dirty = False
        status = {
            name: {"pid": svc.proc.pid if svc.proc else None, "running": svc.proc is not None,
                   "restarts": svc.restarts, "last_exit": svc.last_exit, "gen": svc.started_gen,
                   "netns": svc.spec.netns}
            for name, svc in sorted(self.services.items())
        }
        tmp = self.run_dir / "status.json.tmp"
        tmp.write_text(json.dumps(status, indent=1))
        tmp.replace(self.run_dir / "status.json")

    def shutdown(self) -> None:
        self.stopping = True
        for svc in self.services.values():
            self.signal(svc, signal.SIGTERM)
        deadline = time.monotonic() + GRACE
        while time.monotonic() < deadline and any(s.proc and s.proc.poll() is None for s in self.services.values()):
            time.sleep(TICK)
        for svc in self.services.values():
            self.signal(svc, signal.SIGKILL)
            self.reap(svc, time.monotonic())
        self.write_status()

    def health_checker(self) -> Callable[[float], bool] | None:
        """The lab's anycast health check, when this supervisor runs a lab (not a bare run dir in a test)."""
        if not (self.run_dir / "lab.json").exists():
            return None
        from netns_lab.anycast import EdgeHealth
        from netns_lab.lab import Lab

        lab = Lab(self.lab_id)
        if lab.run_dir.resolve() != self.run_dir.resolve():
            return None
        return EdgeHealth(lab).tick

    def run(self) -> None:
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        health = self.health_checker()
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
        log(f"supervisor of lab {self.lab_id} started, pid {os.getpid()}")
        try:
            ticks = 0
            while True:
                try:
                    self.reconcile()
                except Exception as exc:  # a full disk or a vanished directory must not orphan the services
                    log(f"reconcile failed: {exc!r}")
                ticks += 1
                if health is not None and ticks % HEALTH_EVERY == 0:
                    try:
                        if health(time.monotonic()):
                            log(f"anycast withdrawn from: {', '.join(sorted(self.withdrawn())) or 'none'}")
                    except Exception as exc:  # the health check must never take the supervisor down
                        log(f"anycast health check failed: {exc!r}")
                time.sleep(TICK)
        finally:
            self.shutdown()
            log("supervisor stopped")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m netns_lab.supervisor RUN_DIR LAB_ID", file=sys.stderr)
        return 2
    Supervisor(Path(argv[0]), argv[1]).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
