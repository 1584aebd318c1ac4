"""Thin adapters over the system: `ip -batch`, setns(2) for sysctls, and finding processes.

`ip -batch` runs one process per namespace for hundreds of netlink requests (the lab builds in tens of
milliseconds, not seconds); sysctls are written in-process after setns(2) into the namespace, since
/proc/sys/net resolves against the writing thread's network namespace.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from netns_lab.errors import LabError

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
MARKER_ENV = "SIXPN_LAB_OWNER"  # set on every process the lab starts: `down` finds them by it

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise LabError(f"setns: {os.strerror(err)}")


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the body with this thread in network namespace `name`; always switch back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(NETNS_DIR / name, os.O_RDONLY)
    except OSError as exc:
        os.close(home)
        raise LabError(f"no network namespace {name}: {exc.strerror}") from exc
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def write_sysctls(ns: str, values: dict[str, str]) -> None:
    with in_netns(ns):
        for key, value in values.items():
            Path("/proc/sys", key).write_text(value)


@dataclass(frozen=True)
class Batch:
    """One `ip [-4|-6] [-n NS] -batch -` run."""

    lines: Sequence[str]
    ns: str | None = None
    family: str | None = None  # "-4" / "-6"

    def argv(self, force: bool) -> list[str]:
        argv = ["ip"]
        if self.family:
            argv.append(self.family)
        if self.ns:
            argv += ["-n", self.ns]
        if force:
            argv.append("-force")
        return [*argv, "-batch", "-"]


def run_batches(batches: Iterable[Batch], force: bool = False) -> None:
    """Run batches in parallel; raise with the first failure's message (unless `force`: best effort)."""
    running = []
    for batch in batches:
        if not batch.lines:
            continue
        proc = subprocess.Popen(batch.argv(force), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        running.append((batch, proc))
    errors = []
    for batch, proc in running:
        _, err = proc.communicate("\n".join(batch.lines) + "\n")
        if proc.returncode != 0 and not force:
            errors.append(f"ip {'-n ' + batch.ns if batch.ns else ''}: {err.strip().splitlines()[-1:] or '?'}")
    if errors:
        raise LabError("; ".join(errors))


def run_batch(lines: Sequence[str], ns: str | None = None, family: str | None = None, force: bool = False) -> None:
    run_batches([Batch(lines, ns, family)], force)


def list_netns() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def _netns_inode(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _proc_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def pids_in_netns(names: Iterable[str]) -> set[int]:
    """Every process whose network namespace is one of `names` (what `ip netns pids` does, for many)."""
    wanted = {ino for ino in (_netns_inode(NETNS_DIR / n) for n in names) if ino is not None}
    if not wanted:
        return set()
    found = set()
    for pid in _proc_pids():
        if _netns_inode(Path(f"/proc/{pid}/ns/net")) in wanted:
            found.add(pid)
    return found


def pids_with_marker(lab_id: str) -> set[int]:
    """Every process started by the lab `lab_id` (its environment carries the marker), even one that
    has left the lab's namespaces."""
    needle = f"{MARKER_ENV}={lab_id}".encode()
    found = set()
    for pid in _proc_pids():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.add(pid)
    return found


def kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    me = os.getpid()
    for pid in pids:
        if pid == me:
            continue
        with suppress(ProcessLookupError):
            os.kill(pid, sig)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def runs(pid: int, *needles: str) -> bool:
    """Whether live process `pid` has every needle in its command line: a pid read from a file may have
    been recycled by an unrelated process, which must never get our signals."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return alive(pid) and all(n in cmdline for n in needles)


def has_env(pid: int, entry: str) -> bool:
    """Whether process `pid` started with `entry` (NAME=value) in its environment."""
    try:
        return entry.encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") and alive(pid)
    except OSError:
        return False


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
