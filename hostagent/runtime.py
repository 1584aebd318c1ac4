"""The host's side of a machine: its namespace and veth, its state file, its sandboxed process (the I/O).

A machine `<id>` lives in network namespace `<prefix>-m-<id>`, joined to the worker (the namespace the agent runs
in) by a veth: `m<id>` on the worker with the /112's gateway address, `eth0` in the machine with `::2/112` and a
default route via the gateway. `/etc/netns/<ns>/resolv.conf` points at fdaa::3 and `/etc/netns/<ns>/hosts` maps
fly-local-6pn and the machine id to its 6PN address (`ip netns exec` binds both over /etc).

Each started machine has a state file `<run>/machines/<id>.json` (0600, in 0700 directories): the pid of its
sandbox (bwrap, in its own session), that process's start time from /proc/<pid>/stat (so a recycled pid is never
mistaken for it), when it started, its restart count and its environment. A restarted agent re-attaches to every
live pid whose start time matches. bwrap's own JSON status goes to `<id>.status`, which keeps the exit code of a
machine whose agent was not its parent.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from catalog import addressing
from catalog.models import Machine
from hostagent.errors import HostAgentError

ETC_NETNS = Path("/etc/netns")
NETNS_DIR = Path("/run/netns")


def machine_ns(prefix: str, machine_id: str) -> str:
    return f"{prefix}-m-{machine_id}"


def veth_name(machine_id: str) -> str:
    return addressing.machine_link(machine_id)  # the mesh's isolation knows machines by this name


@dataclass(frozen=True)
class Record:
    """A started machine's state file."""

    machine: str
    pid: int
    start_time: int  # /proc/<pid>/stat field 22, clock ticks since boot
    started_at: float  # wall clock (time.time()) of the start: survives the agent's restart
    restarts: int = 0
    uid: int = 0  # the app's unprivileged uid (and gid) in its sandbox
    env: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<Record {self.machine} pid {self.pid} restarts {self.restarts}>"


class RunDir:
    """The agent's run directory: 0700, state files 0600 (they name pids and carry the apps' environment)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.machines = path / "machines"
        try:
            for d in (path, self.machines):
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(d, 0o700)
        except OSError as exc:
            raise HostAgentError(f"cannot use run dir {path}: {exc.strerror}") from exc

    def record_path(self, machine_id: str) -> Path:
        return self.machines / f"{machine_id}.json"

    def status_path(self, machine_id: str) -> Path:
        return self.machines / f"{machine_id}.status"

    def write(self, record: Record) -> None:
        path = self.record_path(record.machine)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(record), out)
        tmp.replace(path)  # atomic: a reader (the lab's `machines kill`) never sees half a file

    def read(self, machine_id: str) -> Record | None:
        try:
            doc: dict[str, Any] = json.loads(self.record_path(machine_id).read_text())
            return Record(machine=str(doc["machine"]), pid=int(doc["pid"]), start_time=int(doc["start_time"]),
                          started_at=float(doc["started_at"]), restarts=int(doc.get("restarts", 0)),
                          uid=int(doc.get("uid", 0)),
                          env={str(k): str(v) for k, v in doc.get("env", {}).items()})
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def records(self) -> list[Record]:
        found = (self.read(p.stem) for p in sorted(self.machines.glob("*.json")))
        return [r for r in found if r is not None]

    def forget(self, machine_id: str) -> None:
        self.record_path(machine_id).unlink(missing_ok=True)

    def exit_status(self, machine_id: str) -> int | None:
        """The exit code bwrap wrote when the app ended (128 + N: killed by signal N, reported as -N)."""
        try:
            lines = self.status_path(machine_id).read_text().splitlines()
        except OSError:
            return None
        for line in reversed(lines):
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict) and isinstance(doc.get("exit-code"), int):
                    code = int(doc["exit-code"])
                    return -(code - 128) if 128 < code < 160 else code
        return None

    def inner_pid(self, machine_id: str) -> int | None:
        """The sandbox's pid 1 (as seen from the host): where `nsenter` goes to run a command inside."""
        with contextlib.suppress(OSError):
            for line in self.status_path(machine_id).read_text().splitlines():
                with contextlib.suppress(ValueError):
                    doc = json.loads(line)
                    if isinstance(doc, dict) and isinstance(doc.get("child-pid"), int):
                        return int(doc["child-pid"])
        return None


# -- /proc ------------------------------------------------------------------------------------------


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat, or None for a dead (or zombie) process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def listens(pid: int, port: int) -> bool:
    """Whether the network namespace of `pid` has a TCP socket listening on `port` (/proc/<pid>/net shows that
    namespace's sockets: nothing is spawned to look)."""
    for name in ("tcp6", "tcp"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for fields in (line.split() for line in lines):
            if len(fields) > 3 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def pids_in_netns(ns: str) -> list[int]:
    try:
        st = (NETNS_DIR / ns).stat()
    except OSError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                pst = os.stat(f"/proc/{entry}/ns/net")
                if (pst.st_dev, pst.st_ino) == (st.st_dev, st.st_ino):
                    found.append(int(entry))
    return found


def signal_group(pid: int, sig: int) -> None:
    """The sandbox runs in its own session and process group: the signal reaches bwrap, its pid 1 and the app."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def signal_app(pid: int, sig: int) -> None:
    """`sig` to every process of the sandbox's group but bwrap itself (`pid`): bwrap would die of a SIGTERM at
    once, while the app may take its time to shut down, and bwrap's exit is how the agent learns the app is
    gone. (The sandbox's pid 1 ignores it: a PID namespace's init gets only the signals it handles.)"""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == pid:
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry), sig)


# -- namespaces ------------------------------------------------------------------------------------


def _ip_batch(lines: list[str], ns: str | None = None, force: bool = False) -> None:
    argv = ["ip", *(["-n", ns] if ns else []), *(["-force"] if force else []), "-batch", "-"]
    done = subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=30)
    if done.returncode != 0 and not force:
        raise HostAgentError(f"ip {'-n ' + ns if ns else ''}: {done.stderr.strip().splitlines()[-1:] or '?'}")


def build(machine: Machine, ns: str) -> None:
    """Namespace, veth (worker side in the caller's namespace), addresses, route and /etc/netns views."""
    a = addressing.parse(machine.address)
    gw = addressing.machine_gateway(a.network_id, a.host_id, a.slot_id)
    veth = veth_name(machine.id)
    if (NETNS_DIR / ns).exists():
        teardown(ns)  # a half-built namespace of a crashed run: build it again from nothing
    etc = ETC_NETNS / ns
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text(f"nameserver {addressing.DNS_ADDRESS}\n")
    (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                               f"{machine.address}\tfly-local-6pn\n{machine.address}\t{machine.id}\n")
    _ip_batch([f"netns add {ns}", f"link add {veth} type veth peer name eth0 netns {ns}",
               f"addr add {gw}/112 dev {veth} nodad", f"link set {veth} up"])
    _ip_batch(["link set lo up", f"addr add {machine.address}/112 dev eth0 nodad", "link set eth0 up",
               f"route add ::/0 via {gw}"], ns)


def built(ns: str) -> bool:
    return (NETNS_DIR / ns).exists()


def teardown(ns: str) -> None:
    """Kill whatever is left in the namespace and remove it (its veth goes with it) and its /etc/netns view."""
    for pid in pids_in_netns(ns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _ip_batch([f"netns del {ns}"], force=True)
    shutil.rmtree(ETC_NETNS / ns, ignore_errors=True)
