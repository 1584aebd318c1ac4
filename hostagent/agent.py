"""The asyncio adapter: follows the catalog, feeds `plan` and `policy`, does what they return, reports back.

One `Slot` per machine of this host holds what the agent knows of it (phase, pid and its pidfd, restart count,
the fields last reported). Exits are noticed the moment they happen: each sandbox's pidfd (`os.pidfd_open`, which
works for a process the agent did not fork, i.e. after adoption) is watched with `loop.add_reader`. The only way
the agent writes to the catalog is `Catalog.observe_machine` for its own machines, and only what changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catalog import Catalog, CatalogError, Follower
from catalog.addressing import parse
from catalog.models import App, Change, Machine
from catalog.state import State
from hostagent import checks as checkmod
from hostagent import runtime
from hostagent.errors import HostAgentError
from hostagent.plan import Action, Phase, Prepare, Start, Stop, Teardown, Want, plan
from hostagent.policy import Restart, StayDown, decide
from hostagent.runtime import Record, RunDir
from hostagent.sandbox import FIRST_UID, Sandbox, host_layout

START_TIMEOUT = 20.0  # bounded wait for a started app to listen on its internal port
GRACE = 5.0  # seconds between SIGTERM and SIGKILL (Fly's default kill_timeout is 5 s)
LISTEN_POLL = 0.02
DEFAULT_PORT = 8080


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


@dataclass
class Slot:
    """What the agent holds of one machine of its host (mutable: the adapter's bookkeeping, not a decision)."""

    machine_id: str
    phase: Phase = "absent"
    pid: int | None = None
    pidfd: int | None = None
    child: subprocess.Popen[bytes] | None = None  # set when this agent forked it (then it can reap it)
    started_mono: float = 0.0
    restarts: int = 0
    reported: dict[str, Any] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)  # readiness wait, checks, stop timer
    timer: asyncio.TimerHandle | None = None  # a scheduled restart

    def __repr__(self) -> str:
        pid = f" pid {self.pid}" if self.pid else ""
        return f"<Slot {self.machine_id} {self.phase}{pid} restarts {self.restarts}>"


@dataclass(frozen=True)
class Options:
    host: str
    run_dir: Path
    netns_prefix: str = "sixpn"
    log_dir: Path | None = None
    shares: tuple[str, ...] = ()  # host directories every machine sees read-write (the lab's volumes)
    ro_binds: tuple[str, ...] = ()
    grace: float = GRACE


def python_binds() -> tuple[str, ...]:
    """What the default app (`python -m netns_lab.sampleapp`) needs to see: the interpreter, its virtualenv,
    PYTHONPATH and the source tree the agent itself runs from."""
    import catalog

    paths = [sys.prefix, sys.base_prefix, os.path.realpath(sys.executable).rsplit("/bin/", 1)[0],
             str(Path(catalog.__file__).resolve().parent.parent)]
    paths += [p for p in os.environ.get("PYTHONPATH", "").split(":") if p]
    return tuple(os.path.realpath(p) for p in paths if os.path.isdir(p))


class Agent:
    def __init__(self, catalog: Catalog, options: Options) -> None:
        self.catalog = catalog
        self.options = options
        self.host = options.host
        self.run = RunDir(options.run_dir)
        self.log_dir = options.log_dir or options.run_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.slots: dict[str, Slot] = {}
        self.follower = Follower(catalog)
        self.desired_seen: dict[str, str] = {}
        self.start_requests: set[str] = set()
        self.binds = (*python_binds(), *options.ro_binds)
        self.layout = host_layout()
        self.loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        phases: dict[str, int] = {}
        for slot in self.slots.values():
            phases[slot.phase] = phases.get(slot.phase, 0) + 1
        counts = ", ".join(f"{n} {p}" for p, n in sorted(phases.items())) or "no machines"
        return f"<Agent {self.host} v{self.follower.state.version}: {counts}>"

    # -- the catalog ----------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.follower.state

    def mine(self) -> dict[str, Machine]:
        return {m.id: m for m in self.state.machines.values() if m.host == self.host}

    def ns(self, machine_id: str) -> str:
        return runtime.machine_ns(self.options.netns_prefix, machine_id)

    def on_changes(self, state: State, changes: list[Change]) -> None:
        for change in changes:
            record = change.record
            if change.kind != "machine" or not isinstance(record, Machine) or record.host != self.host:
                continue
            before = self.desired_seen.get(record.id)
            if change.op == "delete":
                self.desired_seen.pop(record.id, None)
                self.start_requests.discard(record.id)
                continue
            if before == "stopped" and record.desired == "started":
                self.start_requests.add(record.id)  # `machines start`: a start on purpose, even after a crash
            self.desired_seen[record.id] = record.desired
        try:
            self.reconcile()
        except Exception as exc:  # one bad row or a full disk must not stop the agent from following
            log(f"reconcile failed: {exc!r}")

    def report(self, machine_id: str, **fields: Any) -> None:
        """Write the observed fields that differ from the row (or from what this agent last wrote)."""
        slot = self.slots.get(machine_id)
        row = self.state.machines.get(machine_id)
        if slot is None or row is None:
            return
        # What this agent wrote last is the truth even before its follower sees the write come back.
        changed = {k: v for k, v in fields.items() if slot.reported.get(k, getattr(row, k)) != v}
        if not changed:
            return
        try:
            self.catalog.observe_machine(machine_id, self.host, **changed)
        except CatalogError as exc:
            log(f"{machine_id}: cannot report {changed}: {exc}")
            return
        slot.reported.update(changed)
        log(f"{machine_id}: reported {', '.join(f'{k}={v}' for k, v in changed.items())}")

    # -- deciding -------------------------------------------------------------------------------

    def reconcile(self) -> None:
        mine = self.mine()
        wanted = {mid: Want(m.desired, mid in self.start_requests) for mid, m in mine.items()}
        phases = {mid: s.phase for mid, s in self.slots.items()}
        for action in plan(wanted, phases):
            try:
                self.act(action, mine)
            except HostAgentError as exc:
                log(f"{action.machine_id}: {type(action).__name__} failed: {exc}")

    def act(self, action: Action, mine: dict[str, Machine]) -> None:
        slot = self.slots.setdefault(action.machine_id, Slot(action.machine_id))
        if isinstance(action, Start):
            self.start(slot, mine[slot.machine_id], fresh=True)
        elif isinstance(action, Prepare):
            self.prepare(slot, mine[slot.machine_id])
        elif isinstance(action, Stop):
            self.stop(slot)
        elif isinstance(action, Teardown):
            self.teardown(slot)

    # -- doing ----------------------------------------------------------------------------------

    def app_of(self, machine: Machine) -> App:
        app = self.state.apps.get(machine.app)
        if app is None:
            raise HostAgentError(f"no app {machine.app!r} in the catalog")
        return app

    def prepare(self, slot: Slot, machine: Machine) -> None:
        try:
            runtime.build(machine, self.ns(machine.id))
        except (HostAgentError, OSError) as exc:
            slot.phase = "down"
            self.report(machine.id, state="failed")
            raise HostAgentError(f"cannot build: {exc}") from exc
        slot.phase = "down"
        self.report(machine.id, state="stopped")

    def start(self, slot: Slot, machine: Machine, fresh: bool) -> None:
        self.start_requests.discard(machine.id)  # any start, the policy's too, answers a pending request
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None
        if fresh:
            slot.restarts = 0
        try:
            app = self.app_of(machine)
            ns = self.ns(machine.id)
            if slot.phase == "absent" or not runtime.built(ns):
                runtime.build(machine, ns)
            self.spawn(slot, machine, app)
        except (HostAgentError, OSError, CatalogError) as exc:
            slot.phase = "down"
            self.report(machine.id, state="failed")
            raise HostAgentError(f"cannot start: {exc}") from exc
        slot.phase = "starting"
        slot.tasks.append(asyncio.ensure_future(self.wait_listening(slot, machine, app)))

    def spawn(self, slot: Slot, machine: Machine, app: App) -> None:
        port = internal_port(app, machine.process_group) or DEFAULT_PORT
        env = machine_env(machine, app, port)
        status = self.run.status_path(machine.id)
        status_fd = os.open(status, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        sandbox = Sandbox(hostname=machine.id, uid=machine_uid(machine), ro_binds=self.binds,
                          rw_binds=self.options.shares, status_fd=status_fd)
        links, etc = self.layout
        argv = ["ip", "netns", "exec", self.ns(machine.id),
                *sandbox.argv(machine_argv(app, machine.process_group, port), links, etc)]
        log_fd = os.open(self.log_dir / f"{machine.id}.app.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            with os.fdopen(log_fd, "ab") as out:  # 0600: an app's output may hold its secrets
                child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True, pass_fds=(status_fd,))
        finally:
            os.close(status_fd)
        slot.child = child
        slot.started_mono = time.monotonic()
        start = runtime.start_time(child.pid) or 0
        self.run.write(Record(machine.id, child.pid, start, time.time(), slot.restarts, sandbox.uid, env))
        self.watch(slot, child.pid)
        log(f"{machine.id}: started pid {child.pid} (restart #{slot.restarts})" if slot.restarts
            else f"{machine.id}: started pid {child.pid}")

    def watch(self, slot: Slot, pid: int) -> None:
        assert self.loop is not None
        slot.pid = pid
        slot.pidfd = os.pidfd_open(pid)
        self.loop.add_reader(slot.pidfd, self.exited, slot)

    async def wait_listening(self, slot: Slot, machine: Machine, app: App) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        # A process group without a service (a worker) has nothing to listen on: it is started once it runs.
        port = internal_port(app, machine.process_group)
        while port is not None and slot.pid is not None and not runtime.listens(slot.pid, port):
            if time.monotonic() > deadline:
                log(f"{machine.id}: not listening on :{port} after {START_TIMEOUT:.0f}s; reported started anyway")
                break
            await asyncio.sleep(LISTEN_POLL)
        if slot.phase != "starting" or slot.pid is None:
            return  # exited (the exit handler decided) or stopped meanwhile
        slot.phase = "running"
        self.report(machine.id, state="started", restarts=slot.restarts, health="")
        self.start_checks(slot, machine, app)

    def start_checks(self, slot: Slot, machine: Machine, app: App) -> None:
        found = checkmod.checks_of(app.config, machine.process_group)
        if found:
            slot.tasks.append(asyncio.ensure_future(self.run_checks(slot, machine.address, found)))

    async def run_checks(self, slot: Slot, address: str, found: tuple[checkmod.Check, ...]) -> None:
        results: list[bool | None] = [None] * len(found)
        due = [time.monotonic() + c.grace_period for c in found]
        while slot.phase == "running":
            now = time.monotonic()
            ready = [i for i, when in enumerate(due) if when <= now]
            outcomes = await asyncio.gather(*(checkmod.run_once(address, found[i]) for i in ready))
            for i, ok in zip(ready, outcomes, strict=True):
                results[i] = ok
                due[i] = time.monotonic() + found[i].interval
            if slot.phase != "running":
                return
            self.report(slot.machine_id, health=checkmod.overall(results))
            await asyncio.sleep(max(0.0, min(due) - time.monotonic()))

    def cancel_tasks(self, slot: Slot) -> None:
        for task in slot.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        slot.tasks.clear()

    def stop(self, slot: Slot) -> None:
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None
        if slot.pid is None:
            slot.phase = "down"
            self.report(slot.machine_id, state="stopped")
            return
        slot.phase = "stopping"
        self.terminate(slot)

    def terminate(self, slot: Slot) -> None:
        """SIGTERM the app now (bwrap ends when it does), SIGKILL the whole group after the grace if it still runs."""
        self.cancel_tasks(slot)
        pid = slot.pid
        assert pid is not None and self.loop is not None
        runtime.signal_app(pid, signal.SIGTERM)

        def kill() -> None:
            if slot.pid == pid:
                log(f"{slot.machine_id}: still running {self.options.grace:.0f}s after SIGTERM: SIGKILL")
                runtime.signal_group(pid, signal.SIGKILL)

        self.loop.call_later(self.options.grace, kill)

    def teardown(self, slot: Slot) -> None:
        slot.phase = "tearing"
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None
        if slot.pid is not None:
            self.terminate(slot)  # the exit handler finishes the teardown
            return
        self.remove(slot)

    def remove(self, slot: Slot) -> None:
        self.cancel_tasks(slot)
        runtime.teardown(self.ns(slot.machine_id))
        self.run.forget(slot.machine_id)
        self.run.status_path(slot.machine_id).unlink(missing_ok=True)
        self.slots.pop(slot.machine_id, None)
        log(f"{slot.machine_id}: removed")

    # -- exits ----------------------------------------------------------------------------------

    def exited(self, slot: Slot) -> None:
        """The pidfd became readable: the sandbox's process is gone."""
        assert self.loop is not None and slot.pidfd is not None and slot.pid is not None
        self.loop.remove_reader(slot.pidfd)
        code = self.reap(slot)
        os.close(slot.pidfd)
        # Nothing of the app outlives it: the sandbox's pid 1 is gone, so the kernel killed its PID namespace.
        slot.pid = slot.pidfd = None
        slot.child = None
        self.run.forget(slot.machine_id)
        self.cancel_tasks(slot)
        log(f"{slot.machine_id}: exited with {code}")
        self.after_exit(slot, code)

    def reap(self, slot: Slot) -> int | None:
        """The exit code: from waitid when this agent is the parent, else from bwrap's status file."""
        assert slot.pidfd is not None
        code: int | None = None
        if slot.child is not None:
            with contextlib.suppress(ChildProcessError, OSError):
                result = os.waitid(os.P_PIDFD, slot.pidfd, os.WEXITED | os.WNOHANG)
                if result is not None:
                    code = result.si_status if result.si_code == os.CLD_EXITED else -result.si_status
            slot.child.returncode = code if code is not None else -1  # reaped here: Popen must not wait again
        app_code = self.run.exit_status(slot.machine_id)
        # bwrap exits with the app's status; when the sandbox itself was killed (`machines kill` kills the
        # whole group) waitid's signal is the truth, and bwrap wrote nothing.
        return app_code if app_code is not None and (code is None or code >= 0) else code

    def after_exit(self, slot: Slot, code: int | None) -> None:
        machine = self.state.machines.get(slot.machine_id)
        if slot.phase == "tearing" or machine is None or machine.host != self.host:
            self.remove(slot)
            return
        if slot.phase == "stopping" or machine.desired == "stopped":
            slot.phase = "down"
            self.report(slot.machine_id, state="stopped", exit_code=code, restarts=slot.restarts, health="")
            return
        try:
            policy = self.app_of(machine).config.restart_for(machine.process_group)
        except HostAgentError:
            slot.phase = "down"
            self.report(slot.machine_id, state="stopped", exit_code=code, restarts=slot.restarts, health="")
            return
        decision = decide(code, policy, slot.restarts, slot.started_mono, time.monotonic())
        self.report(slot.machine_id, state="stopped", exit_code=code, restarts=slot.restarts, health="")
        if isinstance(decision, StayDown):
            slot.phase = "down"
            log(f"{slot.machine_id}: left stopped: {decision.why}")
            return
        assert isinstance(decision, Restart) and self.loop is not None
        slot.phase = "backoff"
        slot.restarts = decision.restarts
        delay = max(0.0, decision.at - time.monotonic())
        slot.timer = self.loop.call_later(delay, self.restart, slot)

    def restart(self, slot: Slot) -> None:
        slot.timer = None
        machine = self.state.machines.get(slot.machine_id)
        if slot.phase != "backoff" or machine is None:
            return
        try:
            self.start(slot, machine, fresh=False)
        except HostAgentError as exc:
            log(f"{slot.machine_id}: restart failed: {exc}")

    # -- adoption -------------------------------------------------------------------------------

    def adopt(self) -> None:
        """Re-attach to the machines a previous run of the agent started: a live pid whose start time matches its
        state file keeps running untouched; one that died meanwhile is handled as an exit."""
        mine = self.mine()
        for record in self.run.records():
            machine = mine.get(record.machine)
            slot = self.slots.setdefault(record.machine, Slot(record.machine))
            slot.restarts = record.restarts
            slot.started_mono = time.monotonic() - max(0.0, time.time() - record.started_at)
            alive = runtime.start_time(record.pid) == record.start_time
            if alive:
                try:
                    self.watch(slot, record.pid)
                except OSError:
                    alive = False
                if alive and runtime.start_time(record.pid) != record.start_time:  # recycled in between
                    assert self.loop is not None and slot.pidfd is not None
                    self.loop.remove_reader(slot.pidfd)
                    os.close(slot.pidfd)
                    slot.pid = slot.pidfd = None
                    alive = False
            if alive:
                log(f"{record.machine}: adopted pid {record.pid}")
                app = None if machine is None else self.state.apps.get(machine.app)
                if machine is None or app is None:
                    slot.phase = "running"  # its row is gone: the plan tears it down
                elif machine.state == "started":
                    slot.phase = "running"
                    self.start_checks(slot, machine, app)
                else:  # the previous agent left before it saw the app listen: wait for it again
                    slot.phase = "starting"
                    slot.tasks.append(asyncio.ensure_future(
                        self.wait_listening(slot, machine, app)))
                continue
            self.run.forget(record.machine)
            if machine is None:
                slot.phase = "down"  # its row is gone: the plan tears it down
                continue
            slot.phase = "running"
            log(f"{record.machine}: pid {record.pid} died while the agent was away")
            self.after_exit(slot, self.run.exit_status(record.machine))
        for mid, machine in mine.items():
            self.desired_seen[mid] = machine.desired

    async def serve(self, stop: asyncio.Event, on_ready: Callable[[], None] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.adopt()
        self.reconcile()
        log(f"host agent of {self.host} following the catalog from v{self.state.version}: {self!r}")
        ready = self.run.path / "ready"
        ready.with_suffix(".tmp").write_text(f"{os.getpid()}\n")
        ready.with_suffix(".tmp").replace(ready)  # for a supervisor: adopted and reconciled, now following
        if on_ready is not None:
            on_ready()
        follow = asyncio.ensure_future(self.follower.run(self.on_changes))
        try:
            await stop.wait()
        finally:
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow
            for slot in self.slots.values():
                self.cancel_tasks(slot)
                if slot.timer is not None:
                    slot.timer.cancel()
            log(f"host agent of {self.host} stopped; its machines keep running: {self!r}")


# -- what a machine runs -------------------------------------------------------------------------


def machine_uid(machine: Machine) -> int:
    """A uid of its own per machine, also across the hosts of one kernel (the lab): its host id and its slot on
    that host, which is never reused (unique for 16,384 hosts and 65,536 machines per host)."""
    a = parse(machine.address)
    return FIRST_UID + (a.host_id % (1 << 14)) * (1 << 16) + a.slot_id % (1 << 16)



def internal_port(app: App, group: str) -> int | None:
    """The internal port of the first service of the machine's process group; None for a group without one
    (an app without any service at all runs the sample app on DEFAULT_PORT, which is waited for)."""
    if not app.config.services:
        return None if app.config.processes else DEFAULT_PORT
    service = next((s for s in app.config.services if not s.processes or group in s.processes), None)
    return None if service is None else service.internal_port


def machine_argv(app: App, group: str, port: int) -> tuple[str, ...]:
    """The group's `[processes]` command, else the lab's sample app (run by module name, never imported here: the
    stand-in for the image a machine of an app without commands would boot)."""
    command = app.config.command_for(group) if app.config.processes else None
    if command:
        return ("/bin/sh", "-c", command)
    return (sys.executable, "-m", "netns_lab.sampleapp", "--port", str(port))


def machine_env(machine: Machine, app: App, port: int) -> dict[str, str]:
    """The app's whole environment: nothing of the agent's own (no lab markers, no credentials paths)."""
    base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp", "PYTHONUNBUFFERED": "1"}
    if os.environ.get("PYTHONPATH"):
        base["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return {
        **base, **dict(app.config.env),
        "FLY_PRIVATE_IP": machine.address, "FLY_REGION": machine.region, "FLY_APP_NAME": machine.app,
        "FLY_MACHINE_ID": machine.id, "FLY_PROCESS_GROUP": machine.process_group, "PORT": str(port),
    }

