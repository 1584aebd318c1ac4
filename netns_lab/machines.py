"""Machines: namespaces joined to their worker, the app's process under the supervisor, catalog rows.

A machine `<mid>` lives in namespace `<lab>-m-<mid>`, joined to its worker by a veth (`m<mid>` on the
worker, `eth0` in the machine). The worker side carries the /112's `::1` (its connected route is the
machine's route); the machine has `::2/112` and a default route via `::1`. `/etc/netns/<ns>/resolv.conf`
points at fdaa::3 and `/etc/netns/<ns>/hosts` maps fly-local-6pn to the 6PN address (`ip netns exec`
bind-mounts both over /etc). The app's process is supervisor service `m-<mid>` with restart=never: a killed
app stays dead (the proxy must notice), `stop`/`start` change the catalog state and the process together.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass

from catalog import App, CatalogError, Machine, addressing
from netns_lab import services, system
from netns_lab.errors import LabError, LabStateError
from netns_lab.lab import ETC_NETNS, Lab
from netns_lab.supervisor import Spec

DEFAULT_PORT = 8080
START_TIMEOUT = 20.0
GONE_AFTER = 0.5  # seconds a starting machine's process must stay unseen before it counts as exited


@dataclass(frozen=True)
class ScaleResult:
    added: tuple[Machine, ...]
    removed: tuple[Machine, ...]
    not_listening: tuple[str, ...] = ()  # started, but nothing listens on the internal port yet


def spread(count: int, regions: list[str]) -> dict[str, int]:
    """`fly scale count N --region a,b,c`: N spread evenly, the first regions get the remainder."""
    if count < 0:
        raise LabError("count must be >= 0")
    if not regions:
        raise LabError("no regions to place machines in")
    base, extra = divmod(count, len(regions))
    return {r: base + (1 if i < extra else 0) for i, r in enumerate(regions)}


def internal_port(app: App) -> int:
    service = app.config.http_service
    return service.internal_port if service else DEFAULT_PORT


def machine_argv(app: App, group: str, port: int) -> tuple[str, ...]:
    command = app.config.command_for(group) if app.config.processes else None
    if command:
        return ("/bin/sh", "-c", command)
    return (sys.executable, "-m", "netns_lab.sampleapp", "--port", str(port))


def machine_env(machine: Machine, app: App, port: int) -> dict[str, str]:
    return {
        **dict(app.config.env),
        "FLY_PRIVATE_IP": machine.address, "FLY_REGION": machine.region, "FLY_APP_NAME": machine.app,
        "FLY_MACHINE_ID": machine.id, "FLY_PROCESS_GROUP": machine.process_group, "PORT": str(port),
        "PYTHONUNBUFFERED": "1",
    }


def _veth(machine_id: str) -> str:
    return addressing.machine_link(machine_id)  # the mesh's isolation knows machines by this name


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
        added, slow = self.add(app, to_add, group)
        return ScaleResult(tuple(added), tuple(removed), tuple(slow))

    # -- creating -------------------------------------------------------------------------------

    def add(self, app: App, hosts: list[str], group: str = "app") -> tuple[list[Machine], list[str]]:
        if not hosts:
            return [], []
        with self.lab.catalog() as cat:
            machines = [cat.create_machine(app.name, host, state="created", process_group=group) for host in hosts]
        try:
            self._build(machines)
            port = internal_port(app)
            for m in machines:
                spec = Spec(name=f"m-{m.id}", argv=machine_argv(app, group, port), netns=self.lab.plan.machine_ns(m.id),
                            env=tuple(sorted(machine_env(m, app, port).items())), restart="never", gen=1,
                            log=str(self.lab.logs_dir / f"{m.id}.app.log"))
                services.write_spec(self.run_dir, spec)
            self._wait_pids([m.id for m in machines], present=True)
            slow = self._wait_listening(machines, port)
            with self.lab.catalog() as cat:
                started = [cat.set_machine_state(m.id, "started") for m in machines]
        except BaseException:
            self.remove(machines)
            raise
        return started, slow

    def _build(self, machines: list[Machine]) -> None:
        plan = self.lab.plan
        system.run_batch([f"netns add {plan.machine_ns(m.id)}" for m in machines])
        by_worker: dict[str, list[str]] = {}
        inner: list[system.Batch] = []
        for m in machines:
            ns = plan.machine_ns(m.id)
            a = addressing.parse(m.address)
            gw = addressing.machine_gateway(a.network_id, a.host_id, a.slot_id)
            by_worker.setdefault(plan.node(m.host).ns, []).extend([
                f"link add {_veth(m.id)} type veth peer name eth0 netns {ns}",
                f"addr add {gw}/112 dev {_veth(m.id)} nodad",
                f"link set {_veth(m.id)} up",
            ])
            inner.append(system.Batch(["link set lo up", f"addr add {m.address}/112 dev eth0 nodad",
                                       "link set eth0 up", f"route add ::/0 via {gw}"], ns))
            etc = ETC_NETNS / ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "resolv.conf").write_text(f"nameserver {addressing.DNS_ADDRESS}\n")
            (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                                       f"{m.address}\tfly-local-6pn\n{m.address}\t{m.id}\n")
        system.run_batches([system.Batch(lines, ns) for ns, lines in by_worker.items()])
        system.run_batches(inner)

    # -- waiting --------------------------------------------------------------------------------

    def pid(self, machine_id: str) -> int | None:
        pid = system.read_pid(self.run_dir / "pids" / f"m-{machine_id}.pid")
        return pid if pid is not None and system.has_env(pid, f"FLY_MACHINE_ID={machine_id}") else None

    def _wait_pids(self, ids: list[str], present: bool) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while any((self.pid(i) is not None) != present for i in ids):
            if self.lab.supervisor_pid() is None:
                raise LabStateError(f"the supervisor of lab {self.lab.lab_id} is not running")
            if time.monotonic() > deadline:
                raise LabError(f"timed out waiting for machine processes to {'start' if present else 'stop'}")
            time.sleep(0.02)

    def _wait_listening(self, machines: list[Machine], port: int) -> list[str]:
        """Wait (bounded) until each machine's namespace has a TCP listener on `port`; the pid's own
        /proc/<pid>/net/tcp6 shows its namespace's sockets, so no process is spawned to look."""
        pending = {m.id for m in machines}
        missing: dict[str, float] = {}  # machine -> since when its process has not been seen
        deadline = time.monotonic() + START_TIMEOUT
        while pending and time.monotonic() < deadline:
            for mid in list(pending):
                pid = self.pid(mid)
                if pid is None:
                    # Not conclusive at once: a pid file being rewritten, or /proc/<pid>/environ read while the
                    # app's shell execs the app, reads as no process for a moment.
                    since = missing.setdefault(mid, time.monotonic())
                    if time.monotonic() - since > GONE_AFTER:
                        log = self.lab.logs_dir / f"{mid}.app.log"
                        raise LabError(f"machine {mid}'s app exited at start (see {log})")
                    continue
                missing.pop(mid, None)
                if services.listens(pid, port):
                    pending.discard(mid)
            time.sleep(0.05)
        return sorted(pending)

    # -- removing -------------------------------------------------------------------------------

    def remove(self, machines: list[Machine]) -> list[Machine]:
        if not machines:
            return []
        with self.lab.catalog() as cat:
            for m in machines:
                with contextlib.suppress(CatalogError):
                    cat.set_machine_state(m.id, "stopped")  # the proxy stops routing before the process goes
        for m in machines:
            for folder in ("services", "stopped"):
                (self.run_dir / folder / f"m-{m.id}.json").unlink(missing_ok=True)
        with contextlib.suppress(LabError):
            self._wait_pids([m.id for m in machines], present=False)
        namespaces = [self.lab.plan.machine_ns(m.id) for m in machines]
        system.kill_pids(system.pids_in_netns(namespaces))
        system.run_batch([f"netns del {ns}" for ns in namespaces], force=True)
        for ns in namespaces:
            for name in ("resolv.conf", "hosts"):
                (ETC_NETNS / ns / name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                (ETC_NETNS / ns).rmdir()
        with self.lab.catalog() as cat:
            for m in machines:
                with contextlib.suppress(CatalogError):
                    cat.delete_machine(m.id)
        return machines

    # -- fault injection ------------------------------------------------------------------------

    def _machine(self, machine_id: str) -> Machine:
        with self.lab.catalog() as cat:
            return cat.machine(machine_id)

    def stop(self, machine_id: str) -> Machine:
        self._machine(machine_id)
        spec = self.run_dir / "services" / f"m-{machine_id}.json"
        if spec.exists():
            spec.replace(self.run_dir / "stopped" / spec.name)
        self._wait_pids([machine_id], present=False)
        with self.lab.catalog() as cat:
            return cat.set_machine_state(machine_id, "stopped")

    def start(self, machine_id: str) -> Machine:
        machine = self._machine(machine_id)
        for folder in ("services", "stopped"):
            path = self.run_dir / folder / f"m-{machine_id}.json"
            if path.exists():
                doc = json.loads(path.read_text())
                break
        else:
            raise LabStateError(f"machine {machine_id} has no process spec in lab {self.lab.lab_id}")
        doc["gen"] = int(doc.get("gen", 0)) + 1  # a new generation: the supervisor starts it even after a kill
        services.write_spec(self.run_dir, Spec.from_json(doc))
        (self.run_dir / "stopped" / f"m-{machine_id}.json").unlink(missing_ok=True)
        self._wait_pids([machine_id], present=True)
        with self.lab.catalog() as cat:
            app = cat.app(machine.app)
        self._wait_listening([machine], internal_port(app))
        with self.lab.catalog() as cat:
            return cat.set_machine_state(machine_id, "started")

    def kill(self, machine_id: str) -> int:
        """SIGKILL the app's process group; the catalog is NOT touched (the proxy must notice by itself)."""
        self._machine(machine_id)
        pid = self.pid(machine_id)
        if pid is None:
            raise LabStateError(f"machine {machine_id} has no running process")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        return pid


def describe(machine: Machine) -> str:
    return f"{machine.id} {machine.app} {machine.region} {machine.host} {machine.address} {machine.state}"

