"""Machines in the lab: desired state written to the catalog, made so by each worker's host agent.

The lab runs `sixpn host agent --host <worker>` on every worker (services.py); the agent builds a machine's
namespace, starts its app confined in a sandbox, restarts it per the app's restart policy and reports what it
does as the machine's observed state. This module only writes what is wanted (`create_machine(desired=...)`,
`set_machine_desired`, `delete_machine`) and waits, bounded, until the agent reports. It never imports the agent:
the one thing it reads of it is a machine's state file (`<run>/agents/<host>/machines/<id>.json`: pid, start
time, uid, environment), to kill an app on purpose or to enter its sandbox.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalog import App, CatalogError, Machine, NotFound
from netns_lab import system
from netns_lab.errors import LabError, LabStateError
from netns_lab.lab import ETC_NETNS, Lab

START_TIMEOUT = 30.0  # the agent's own bounded wait for listening is 20 s
STOP_TIMEOUT = 15.0  # the agent's grace between SIGTERM and SIGKILL is 5 s
POLL = 0.02


@dataclass(frozen=True)
class ScaleResult:
    added: tuple[Machine, ...]
    removed: tuple[Machine, ...]
    not_listening: tuple[str, ...] = ()  # kept for the CLI: the agent reports started only once listening


def spread(count: int, regions: list[str]) -> dict[str, int]:
    """`fly scale count N --region a,b,c`: N spread evenly, the first regions get the remainder."""
    if count < 0:
        raise LabError("count must be >= 0")
    if not regions:
        raise LabError("no regions to place machines in")
    base, extra = divmod(count, len(regions))
    return {r: base + (1 if i < extra else 0) for i, r in enumerate(regions)}


def agent_record(run_dir: Path, machine_id: str) -> dict[str, Any] | None:
    """The agent's state file of a started machine, from whichever worker's agent holds it."""
    for path in run_dir.glob(f"agents/*/machines/{machine_id}.json"):
        with contextlib.suppress(OSError, ValueError):
            doc: dict[str, Any] = json.loads(path.read_text())
            return doc
    return None


def _start_time(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


class Machines:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.run_dir = lab.run_dir

    # -- placement ------------------------------------------------------------------------------

    def scale(self, app_name: str, count: int, regions: list[str] | None = None, group: str = "app") -> ScaleResult:
        with self.lab.catalog() as cat:
            app = cat.app(app_name)
            state = cat.snapshot()
        workers = self.lab.plan.with_role("worker")
        codes = regions or [r.code for r in self.lab.plan.regions if any(w.region == r.code for w in workers)]
        for code in codes:
            self.lab.plan.region(code)
            if not any(w.region == code for w in workers):
                raise LabError(f"region {code!r} has no worker in lab {self.lab.lab_id}")
        want = spread(count, codes)
        mine = [m for m in state.machines.values() if m.app == app_name and m.process_group == group]
        load = {w.name: sum(1 for m in state.machines.values() if m.host == w.name) for w in workers}
        to_add: list[str] = []
        to_remove: list[Machine] = []
        for code, n in want.items():
            here = sorted((m for m in mine if m.region == code), key=lambda m: m.id)
            to_remove += here[n:]
            for _ in range(n - len(here)):
                host = min((w.name for w in workers if w.region == code), key=lambda h: (load[h], h))
                load[host] += 1
                to_add.append(host)
        removed = self.remove(to_remove)
        added = self.add(app, to_add, group)
        self.lab.wait_replicas()  # replicated catalog: returns once every host's replica has the machines
        return ScaleResult(tuple(added), tuple(removed))

    # -- waiting on the agents ------------------------------------------------------------------

    def _wait(self, ids: list[str], done: Any, what: str, timeout: float) -> dict[str, Machine]:
        """Poll the catalog until `done(machine)` holds for every id; the rows at that moment."""
        deadline = time.monotonic() + timeout
        with self.lab.catalog() as cat:
            while True:
                sync = getattr(cat, "sync", None)
                if sync is not None:
                    sync()  # the operator's replica (replicated catalog): bring it up to the stream each time
                rows = {m.id: m for m in cat.snapshot().machines.values() if m.id in ids}
                pending = [i for i in ids if i not in rows or not done(rows[i])]
                if not pending:
                    return rows
                if time.monotonic() > deadline:
                    hosts = sorted({rows[i].host for i in pending if i in rows})
                    logs = ", ".join(str(self.lab.logs_dir / f"{h}.agent.log") for h in hosts)
                    raise LabError(f"timed out after {timeout:.0f}s waiting for machine(s) {', '.join(pending)} "
                                   f"to be {what} (see {logs or self.lab.logs_dir})")
                time.sleep(POLL)

    # -- creating -------------------------------------------------------------------------------

    def _check_agents(self, hosts: list[str]) -> None:
        """Fail at once, not after a timeout, when a worker has no host agent to run its machines."""
        missing = [h for h in sorted(set(hosts)) if not self.lab.service_running(h, "agent")]
        if missing:
            raise LabStateError(f"no host agent runs on {', '.join(missing)} in lab {self.lab.lab_id} (started "
                                "with --no-services, or stopped with `sixpn lab stop HOST agent`?)")

    def add(self, app: App, hosts: list[str], group: str = "app") -> list[Machine]:
        if not hosts:
            return []
        self._check_agents(hosts)
        with self.lab.catalog() as cat:
            machines = [cat.create_machine(app.name, host, state="created", process_group=group, desired="started")
                        for host in hosts]
        ids = [m.id for m in machines]
        try:
            rows = self._wait(ids, lambda m: m.state in ("started", "failed"), "started", START_TIMEOUT)
            failed = [i for i in ids if rows[i].state == "failed"]
            if failed:
                logs = ", ".join(str(self.lab.logs_dir / f"{i}.app.log") for i in failed)
                raise LabError(f"machine(s) {', '.join(failed)} failed to start (see {logs})")
        except BaseException:
            self.remove(machines)
            raise
        return [rows[i] for i in ids]

    # -- removing -------------------------------------------------------------------------------

    def remove(self, machines: list[Machine]) -> list[Machine]:
        """Desired stopped; once the agents report it (bounded), the rows are deleted and the agents tear the
        namespaces down. Whatever an absent agent leaves behind is removed here, so a scale-down always ends."""
        if not machines:
            return []
        ids = [m.id for m in machines]
        with self.lab.catalog() as cat:
            for mid in ids:
                with contextlib.suppress(NotFound):
                    cat.set_machine_desired(mid, "stopped")
        with contextlib.suppress(LabError):
            self._wait(ids, lambda m: m.state in ("stopped", "failed", "created"), "stopped", STOP_TIMEOUT)
        with self.lab.catalog() as cat:
            for mid in ids:
                with contextlib.suppress(CatalogError):
                    cat.delete_machine(mid)
        namespaces = [self.lab.plan.machine_ns(mid) for mid in ids]
        deadline = time.monotonic() + STOP_TIMEOUT
        while any((system.NETNS_DIR / ns).exists() for ns in namespaces) and time.monotonic() < deadline:
            time.sleep(POLL)
        leftover = [ns for ns in namespaces if (system.NETNS_DIR / ns).exists()]
        if leftover:
            system.kill_pids(system.pids_in_netns(leftover))
            system.run_batch([f"netns del {ns}" for ns in leftover], force=True)
        for ns in namespaces:
            for name in ("resolv.conf", "hosts"):
                (ETC_NETNS / ns / name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                (ETC_NETNS / ns).rmdir()
        return machines

    # -- stop, start, kill ----------------------------------------------------------------------

    def _machine(self, machine_id: str) -> Machine:
        with self.lab.catalog() as cat:
            return cat.machine(machine_id)

    def stop(self, machine_id: str) -> Machine:
        with self.lab.catalog() as cat:
            cat.set_machine_desired(machine_id, "stopped")
        rows = self._wait([machine_id], lambda m: m.state != "started" and self.pid(machine_id) is None, "stopped",
                          STOP_TIMEOUT)
        return rows[machine_id]

    def start(self, machine_id: str) -> Machine:
        """Desired started. A machine left stopped by its restart policy (or killed, policy `no`) while its desired
        state is still started gets a start request: desired stopped, then started, as `fly machine start`."""
        machine = self._machine(machine_id)
        if machine.desired == "started" and machine.state == "started" and self.pid(machine_id) is not None:
            return machine
        with self.lab.catalog() as cat:
            if machine.desired == "started":
                cat.set_machine_desired(machine_id, "stopped")
            cat.set_machine_desired(machine_id, "started")
        rows = self._wait([machine_id], lambda m: m.obs_gen > machine.obs_gen and m.state in ("started", "failed")
                          and (m.state == "failed" or self.pid(machine_id) is not None), "started", START_TIMEOUT)
        if rows[machine_id].state == "failed":
            raise LabError(f"machine {machine_id} failed to start (see {self.lab.logs_dir / f'{machine_id}.app.log'})")
        return rows[machine_id]

    def pid(self, machine_id: str) -> int | None:
        """The pid of the machine's sandbox (its process group leader), while it runs."""
        doc = agent_record(self.run_dir, machine_id)
        if doc is None:
            return None
        pid, start = int(doc.get("pid", 0)), int(doc.get("start_time", -1))
        return pid if pid > 0 and _start_time(pid) == start and system.alive(pid) else None

    def app_pid(self, machine_id: str) -> int | None:
        """The app's own process (host pid): the child of the sandbox's pid 1, which is bwrap's child."""
        pid = self.pid(machine_id)
        for _ in range(2):
            if pid is None:
                return None
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                return None
            pid = int(children[0]) if children else None
        return pid

    def kill(self, machine_id: str) -> int:
        """SIGKILL the app's process, as a crash would end it (fault injection); the catalog is not touched here:
        the host agent notices the exit, reports it (exit code -9) and applies the app's restart policy. Without
        an app process to find, the whole sandbox's process group is killed."""
        self._machine(machine_id)
        sandbox = self.pid(machine_id)
        if sandbox is None:
            raise LabStateError(f"machine {machine_id} has no running process")
        app = self.app_pid(machine_id)
        with contextlib.suppress(ProcessLookupError):
            if app is not None:
                os.kill(app, signal.SIGKILL)
            else:
                os.killpg(sandbox, signal.SIGKILL)
        return app or sandbox


def describe(machine: Machine) -> str:
    return f"{machine.id} {machine.app} {machine.region} {machine.host} {machine.address} {machine.state}"
