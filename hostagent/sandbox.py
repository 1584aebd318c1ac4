"""The machine's sandbox: the bubblewrap (bwrap) command line that confines an app (pure: builds argv only).

A machine's app must not see its host. bwrap (Debian's `bubblewrap`, the sandbox of Flatpak) gives it:
- its own mount namespace whose root is an empty tmpfs holding only read-only binds of what a program needs to
  run (/usr and its /bin, /lib symlinks, a few files of /etc, the Python installation and the source tree the
  default app runs from) and the host directories shared on purpose (`shares`, read-write); no /run, /var,
  /sys, /root or /home of the host: no WireGuard keys or UAPI sockets, no catalog, no other machine's files;
- its own PID namespace (it sees only its own processes), IPC, UTS (hostname = machine id) and cgroup namespaces;
- the machine's network namespace, which the agent enters first (`ip netns exec`, which also binds the
  machine's /etc/netns/<ns>/resolv.conf and hosts over /etc);
- the process group of its bwrap (no `--new-session`: the agent starts it in a session of its own, without a
  terminal, so there is no TIOCSTI to guard against, and one `killpg` reaches bwrap, the sandbox's pid 1 and
  the app);
- an unprivileged uid/gid of its own, no capabilities (bounding set emptied) and no_new_privs: setpriv(1) drops
  them inside the sandbox, since bwrap run by root keeps uid 0 (only without capabilities, and uid 0 still owns
  every 0600 file of the host). Without CAP_SYS_ADMIN and /run/netns, `ip netns exec` fails inside.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

BWRAP = "bwrap"
SETPRIV = "/usr/bin/setpriv"
#: Top-level links of a merged-/usr system (Debian 12): made as the same symlinks inside.
USR_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
#: What of /etc a program may need (names, users, TLS roots, time zone), never the host's secrets.
ETC_FILES = ("resolv.conf", "hosts", "passwd", "group", "nsswitch.conf", "host.conf", "gai.conf", "protocols",
             "services", "localtime", "mime.types", "ssl", "ca-certificates", "alternatives", "ld.so.cache")
FIRST_UID = 100_000  # machine uids: FIRST_UID + the machine's slot on its host, never a host user


@dataclass(frozen=True)
class Sandbox:
    """How one machine's app is confined; `argv(app)` is the command line that runs it so."""

    hostname: str
    uid: int
    ro_binds: tuple[str, ...] = ()  # host paths visible read-only at the same path
    rw_binds: tuple[str, ...] = ()  # host paths shared read-write (the lab's stand-in for volumes)
    status_fd: int | None = None  # bwrap writes its JSON status (child pid, exit code) there

    def argv(self, app: Sequence[str], root_links: Iterable[str] = (), etc: Iterable[str] = ()) -> list[str]:
        """`root_links`: which of USR_LINKS are symlinks on this host; `etc`: which ETC_FILES exist."""
        args = [BWRAP, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                "--hostname", self.hostname,
                "--ro-bind", "/usr", "/usr"]
        for name in root_links:
            args += ["--symlink", f"usr/{name}", f"/{name}"]
        made: set[str] = {"/", "/usr"}
        for name in etc:
            path = f"/etc/{name}"
            args += [*_parents(path, made), "--ro-bind", path, path]
        for path in _outermost(self.ro_binds):
            args += [*_parents(path, made), "--ro-bind", path, path]
        for path in _outermost(self.rw_binds):
            args += [*_parents(path, made), "--bind", path, path]
        args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--chdir", "/",
                 "--setenv", "HOME", "/tmp"]
        if self.status_fd is not None:
            args += ["--json-status-fd", str(self.status_fd)]
        # bwrap run by root keeps these two for setpriv alone; setpriv then drops every capability for good.
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", SETPRIV,
                 "--reuid", str(self.uid), "--regid", str(self.uid), "--clear-groups",
                 "--bounding-set", "-all", "--inh-caps", "-all", "--no-new-privs", "--", *app]
        return args


def _parents(path: str, made: set[str]) -> list[str]:
    """`--dir` for each missing parent with mode 0755 (bwrap would make them 0700, and the app is not root)."""
    args: list[str] = []
    for parent in reversed(PurePosixPath(path).parents):
        text = str(parent)
        if text not in made:
            made.add(text)
            args += ["--perms", "0755", "--dir", text]
    made.add(path)
    return args


def _outermost(paths: Iterable[str]) -> list[str]:
    """Absolute paths without those inside another (a bind of /a hides a bind of /a/b made before it), and
    without the root or /usr, which must never be bound whole or twice."""
    unique = sorted({str(PurePosixPath(p)) for p in paths if PurePosixPath(p).is_absolute()})
    kept: list[str] = []
    for path in unique:
        if path in ("/", "/usr") or path.startswith("/usr/"):
            continue
        if not any(path == k or path.startswith(k + "/") for k in kept):
            kept.append(path)
    return kept


def host_layout(root: Path = Path("/")) -> tuple[list[str], list[str]]:
    """Which USR_LINKS are symlinks here, and which ETC_FILES exist: the two host facts `argv` needs."""
    links = [n for n in USR_LINKS if (root / n).is_symlink()]
    etc = [n for n in ETC_FILES if (root / "etc" / n).exists()]
    return links, etc
