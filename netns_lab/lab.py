"""The lab's Python API, shared by the CLI (`sixpn lab ...`) and the pytest fixture.

    lab = Lab.up(topology, "sx")      # build everything; returns once the delay line and services run
    lab.exec("client-gru", ["ping", "-c1", "192.0.2.1"])
    lab.cut("edge-gru"); lab.heal("edge-gru")
    Lab.down("sx")                    # idempotent; also cleans what a crashed run left

The run directory `/run/sixpn-lab/<id>/` holds `lab.json` (the topology), `state/` (the lab's catalog),
`logs/`, `keys/`, `services/` (the supervisor's desired state), `pids/`, `status.json`, `delay.json`,
`cut.json`, `agents/<worker>/` (each host agent's run dir) and `share/` (a directory every machine sees read-write).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from catalog import Catalog, CatalogError, default_regions, natsconf
from catalog.fleetconfig import load_host_config
from catalog.private import open_append, private_dir, write_private
from netns_lab import fleet, services, system, topology
from netns_lab import plan as planmod
from netns_lab.delaycore import DelayConfig
from netns_lab.errors import LabError, LabStateError
from netns_lab.plan import Plan
from netns_lab.supervisor import Spec
from netns_lab.system import Batch

RUN_ROOT = Path("/run/sixpn-lab")
ETC_NETNS = Path("/etc/netns")
WG_SOCKETS = Path("/var/run/wireguard")
DEFAULT_ID = "sx"
READY_TIMEOUT = 15.0
CLUSTER_TIMEOUT = 20.0
#: The lab's catalog: `replicated` (a replica per host over the lab's NATS cluster, as a real fleet runs) or
#: `embedded` (one SQLite shared by every host namespace, no NATS; quicker to start, for tests of one service).
DEFAULT_CATALOG = "replicated"
CATALOG_ENV = "SIXPN_LAB_CATALOG"


def default_catalog_mode() -> str:
    return os.environ.get(CATALOG_ENV) or DEFAULT_CATALOG
REQUIRED_TOOLS = ("ip",)


def default_lab_id() -> str:
    return os.environ.get("SIXPN_LAB") or DEFAULT_ID


def run_dir_of(lab_id: str) -> Path:
    return RUN_ROOT / planmod.check_lab_id(lab_id)


def check_environment() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces)")
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        raise LabError(f"missing tools: {', '.join(missing)}")
    if not Path("/dev/net/tun").exists():
        raise LabError("/dev/net/tun is missing (the delay line needs TUN devices)")


def _wait(what: str, ready: Any, timeout: float, run_dir: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            hint = f" (see {run_dir / 'logs'})" if run_dir else ""
            raise LabError(f"timed out waiting for {what}{hint}")
        time.sleep(0.02)


class Lab:
    """A running lab, attached through its run directory."""

    def __init__(self, lab_id: str | None = None) -> None:
        self.lab_id = planmod.check_lab_id(lab_id or default_lab_id())
        self.run_dir = run_dir_of(self.lab_id)
        try:
            doc = json.loads((self.run_dir / "lab.json").read_text())
        except (OSError, ValueError):
            raise LabStateError(f"lab {self.lab_id} is not up (no {self.run_dir / 'lab.json'})") from None
        self.topology_text = str(doc["topology"])
        self.catalog_mode = str(doc.get("catalog", "embedded"))
        self.has_cluster = bool(doc.get("cluster", False))
        self.topology = topology.loads(self.topology_text)
        self.plan: Plan = planmod.make_plan(self.lab_id, self.topology)
        self.regions = default_regions()
        self.not_ready: list[str] = []  # host services that were not serving when `up(wait_ready=True)` returned
        self.timings: dict[str, float] = {}  # seconds each phase of `up` took (build, delayline, cluster, ...)

    # -- paths and handles ---------------------------------------------------------------------

    @property
    def replicated(self) -> bool:
        return self.catalog_mode == "replicated"

    @property
    def state_dir(self) -> Path:
        """The operator's catalog directory: the lab's shared embedded catalog, or the operator's own replica."""
        return fleet.operator_dir(self.run_dir) / "state" if self.replicated else self.run_dir / "state"

    @property
    def operator_config(self) -> Path:
        """The operator's seat (`sixpn lab env` exports it as SIXPN_CONFIG)."""
        return fleet.operator_config_path(self.run_dir)

    def host_config(self, node_name: str) -> Path:
        return fleet.host_config_path(self.run_dir, self.plan.node(node_name).name)

    @property
    def logs_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def share_dir(self) -> Path:
        """Seen read-write, at the same path, by every machine's app (the lab's stand-in for a volume)."""
        return self.run_dir / "share"

    def catalog(self) -> Catalog:
        """The catalog as the operator's CLI opens it: writes through NATS with the replicated catalog."""
        if self.replicated:
            from catalog.replicated import ReplicatedCatalog

            return ReplicatedCatalog(load_host_config(self.operator_config))
        return Catalog(self.state_dir)

    def wait_replicas(self, timeout: float = 10.0, at_least: int = 0) -> list[str]:
        """With the replicated catalog: wait until every host's replica has applied the stream up to its last
        sequence now, and to `at_least` (a write's sequence the caller knows; hosts cut off, alone or with their
        region, are not waited for); returns the hosts still behind at the timeout. With the embedded catalog
        every host reads the one catalog: nothing to wait for."""
        if not self.replicated:
            return []
        cut, cut_regions = self.cut_set(), self.cut_regions()
        hosts = [n for n in self.plan.hosts() if n.name not in cut and n.region not in cut_regions]
        # The stream's last sequence, or the furthest replica's if that is further: just after a heal, a server
        # that was cut off may still answer for the stream with what it knew before (until it hears the new
        # term), while a replica on the majority side already holds later, committed messages.
        stream, _ = fleet.stream_seq(self.run_dir)
        seen = [fleet.replica_seq(fleet.host_dir(self.run_dir, n.name) / "state") or 0 for n in hosts]
        target = max([*seen, stream or 0, at_least])
        if stream is None and not target:
            return [n.name for n in hosts]
        deadline = time.monotonic() + timeout
        while True:
            behind = [n.name for n in hosts
                      if (fleet.replica_seq(fleet.host_dir(self.run_dir, n.name) / "state") or 0) < target]
            if not behind or time.monotonic() > deadline:
                return behind
            time.sleep(0.01)

    def env(self) -> dict[str, str]:
        """What the operator's CLI needs to use this lab (`sixpn lab env`)."""
        env = {"SIXPN_CONFIG": str(self.operator_config), "SIXPN_LAB": self.lab_id}
        if not self.replicated:
            env["SIXPN_STATE"] = str(self.state_dir)
        return env

    def machine_record(self, machine_id: str) -> dict[str, Any] | None:
        """The host agent's state file of a running machine (pid, start time, uid, environment)."""
        for path in self.run_dir.glob(f"agents/*/machines/{machine_id}.json"):
            with contextlib.suppress(OSError, ValueError):
                doc: dict[str, Any] = json.loads(path.read_text())
                return doc
        return None

    # -- lifecycle -----------------------------------------------------------------------------

    @classmethod
    def up(cls, topo: topology.Topology | str | Path | None = None, lab_id: str | None = None,
           host_services: bool = True, wait_ready: bool = False, owner_pid: int | None = None,
           catalog: str | None = None, cluster: bool | None = None) -> Lab:
        """Build a lab (cleaning any earlier one with this id first). `topo`: a Topology, a TOML file path,
        or None for the default three-region topology. Returns once the delay line runs and every service
        is spawned; with `wait_ready`, also waits (bounded, see `wait_ready`) until the services serve.
        `owner_pid`: the process the lab belongs to (a test session); `down_orphans` removes the lab once
        that process is gone. `catalog`: "replicated" or "embedded" (default `$SIXPN_LAB_CATALOG`, else
        DEFAULT_CATALOG); `cluster`: run the NATS cluster (always with a replicated catalog; with an embedded
        one only when asked). With a cluster, `up` also waits for its JetStream leader and creates the stream."""
        check_environment()
        lab_id = planmod.check_lab_id(lab_id or default_lab_id())
        mode = catalog or default_catalog_mode()
        with_cluster = mode == "replicated" or bool(cluster)
        text = _topology_text(topo)
        probe = services.probe_groups() if host_services else None
        cls.down(lab_id)
        run_dir = run_dir_of(lab_id)
        try:
            began = time.monotonic()
            _build(lab_id, text, run_dir, owner_pid, mode, with_cluster)
            lab = cls(lab_id)
            lab.timings["build"] = time.monotonic() - began
            groups, error = services.groups_found(probe) if probe else (set(), "")
            (run_dir / "groups.json").write_text(json.dumps(sorted(groups)))
            if error:
                write_private(run_dir / "logs" / "lab.log", f"probing the sixpn CLI's groups failed:\n{error}\n")
            lab._start_services(groups)
            if wait_ready:
                lab.not_ready = lab.wait_ready()
            (run_dir / "starting.pid").unlink(missing_ok=True)
        except BaseException:
            if probe and probe.poll() is None:
                probe.kill()
            cls.down(lab_id)
            raise
        return lab

    @staticmethod
    def down(lab_id: str | None = None) -> list[str]:
        """Remove everything carrying the lab id; returns what was found (empty when already down)."""
        return _teardown(planmod.check_lab_id(lab_id or default_lab_id()))

    @staticmethod
    def down_orphans() -> list[str]:
        """Tear down every lab created with an `owner_pid` whose process is gone (a killed test session)."""
        gone = []
        for lab_json in sorted(RUN_ROOT.glob("*/lab.json")):
            try:
                owner = json.loads(lab_json.read_text()).get("owner_pid")
            except (OSError, ValueError):
                continue
            starting = system.read_pid(lab_json.parent / "starting.pid")
            if starting is not None and system.alive(starting):
                continue  # its `up` is still running (for another owner: a test that plays a dead session)
            if isinstance(owner, int) and not system.alive(owner):
                Lab.down(lab_json.parent.name)
                gone.append(lab_json.parent.name)
        return gone

    def _register(self) -> None:
        keys = fleet.host_public_keys(self.plan, self.run_dir / "keys") if self.replicated else {}
        with self.catalog() as cat:
            for node in self.plan.hosts():
                cat.register_host(node.name, node.region, node.role, str(node.v4),  # type: ignore[arg-type]
                                  public_key=keys.get(node.name, ""))
            for org in self.topology.orgs:
                cat.create_org(org)

    def _start_services(self, groups: set[str]) -> None:
        """The delay line first; then, with a cluster, each region's NATS server, the door and the replicators;
        the stream is created and the hosts and orgs registered; then the hosts' services (which find their
        host's row at once instead of crashing until it comes)."""
        for spec in [services.delayline_spec(self.plan, self.run_dir)]:
            services.write_spec(self.run_dir, spec)
        env = {**os.environ, system.MARKER_ENV: self.lab_id}
        with open_append(self.logs_dir / "supervisor.log") as out:
            proc = subprocess.Popen([sys.executable, "-m", "netns_lab.supervisor", str(self.run_dir), self.lab_id],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        (self.run_dir / "supervisor.pid").write_text(f"{proc.pid}\n")
        began = time.monotonic()
        _wait("the delay line", lambda: (self.run_dir / "delayline.ready").exists(), READY_TIMEOUT, self.run_dir)
        self.timings["delayline"] = time.monotonic() - began
        if self.has_cluster:
            # Only now: a route dialed before the delay line carries packets is lost and retried a second later,
            # which delays the cluster's first leader.
            began = time.monotonic()
            specs = services.cluster_specs(self.plan, self.run_dir, self.replicated and "catalog.replicate" in groups)
            # One server at a time, each once the one before listens for routes: a server dials the ones before
            # it (natsconf), and a first dial refused is retried only a second later, while the servers learn of
            # each other by gossip and dial both ways; the duplicate routes they then drop disrupt the first
            # JetStream election, which then waits for raft's election timeout (4-9 s instead of 0.2-0.7 s).
            for spec in specs:
                self._spawn([spec])
                if spec.name.endswith(".nats"):
                    pid = system.read_pid(self.run_dir / "pids" / f"{spec.name}.pid")
                    _wait(f"{spec.name} to listen", lambda pid=pid: pid is not None and services.listens(
                        pid, natsconf.CLUSTER_PORT), READY_TIMEOUT, self.run_dir)
            fleet.init_stream(self.run_dir, CLUSTER_TIMEOUT, planmod.nats_hosts(self.plan)[0].name)
            self.timings["cluster"] = time.monotonic() - began
        began = time.monotonic()
        self._register()
        self.timings["register"] = time.monotonic() - began
        began = time.monotonic()
        self._spawn(services.host_specs(self.plan, self.run_dir, groups))
        self.timings["services"] = time.monotonic() - began

    def _spawn(self, specs: list[Spec]) -> None:
        for spec in specs:
            services.write_spec(self.run_dir, spec)
        pids = self.run_dir / "pids"
        _wait("the services to start", lambda: all((pids / f"{s.name}.pid").exists() for s in specs),
              READY_TIMEOUT, self.run_dir)

    def wait_ready(self, timeout: float = 30.0) -> list[str]:
        """Wait until every host service serves (proxy on :80, DNS on :53, the mesh's WireGuard interface
        up); returns the services still not ready after `timeout` (a broken service does not fail the lab:
        the supervisor keeps restarting it and its log says why)."""
        specs = [s for s in self._specs() if "." in s.name]  # host services are named <node>.<service>
        deadline = time.monotonic() + timeout
        pending = [s.name for s in specs]
        while pending and time.monotonic() < deadline:
            pending = []
            for spec in specs:
                pid = system.read_pid(self.run_dir / "pids" / f"{spec.name}.pid")
                role = self.plan.node(spec.name.split(".", 1)[0]).role
                if pid is None or not system.alive(pid) or not services.is_ready(spec, pid, role):
                    pending.append(spec.name)
            if pending:
                time.sleep(0.1)
        return pending

    def _specs(self) -> list[Spec]:
        specs = []
        for path in sorted((self.run_dir / "services").glob("*.json")):
            with contextlib.suppress(OSError, ValueError, KeyError):
                specs.append(Spec.from_json(json.loads(path.read_text())))
        return specs

    # -- the backbone --------------------------------------------------------------------------

    def cut_set(self) -> frozenset[str]:
        return self._read_set("cut.json")

    def withdrawn_set(self) -> frozenset[str]:
        """Edges whose anycast route is withdrawn because their proxy is stopped or stopped serving
        (kept by the supervisor's health check, see anycast.py)."""
        return self._read_set("withdrawn.json")

    def _read_set(self, name: str) -> frozenset[str]:
        try:
            return frozenset(json.loads((self.run_dir / name).read_text()))
        except (OSError, ValueError):
            return frozenset()

    def _write_set(self, name: str, names: set[str] | frozenset[str]) -> None:
        tmp = self.run_dir / f"{name}.tmp"
        tmp.write_text(json.dumps(sorted(names)))
        tmp.replace(self.run_dir / name)

    def cut_regions(self) -> frozenset[str]:
        return self._read_set("cut_regions.json")

    def cut(self, name: str) -> None:
        """Take a node off the backbone (its veth on the bridge goes down; a NATS server on it goes with it),
        or, given a region's code, cut the whole region off every other region and off the operator (see
        `plan.region_cut_lines`); anycast moves away from what is cut."""
        if self._is_region(name):
            self._set_region_cut(name, True)
        else:
            self._set_cut(name, True)

    def heal(self, name: str) -> None:
        if self._is_region(name):
            self._set_region_cut(name, False)
        else:
            self._set_cut(name, False)

    def _is_region(self, name: str) -> bool:
        return any(r.code == name for r in self.plan.regions)

    def _set_region_cut(self, code: str, cut: bool) -> None:
        regions = set(self.cut_regions())
        (regions.add if cut else regions.discard)(code)
        self._write_set("cut_regions.json", regions)
        # Idempotent: whatever rules are there go first (a failed earlier cut may have left some).
        system.run_batches([Batch(planmod.region_cut_lines(self.plan, code, False, family), self.plan.bb_ns,
                                  f"-{family}") for family in (4, 6)], force=True)
        if cut:
            system.run_batches([Batch(planmod.region_cut_lines(self.plan, code, True, family), self.plan.bb_ns,
                                      f"-{family}") for family in (4, 6)])
        self.apply_anycast()

    def _set_cut(self, node_name: str, cut: bool) -> None:
        node = self.plan.node(node_name)
        cuts = set(self.cut_set())
        (cuts.add if cut else cuts.discard)(node.name)
        self._write_set("cut.json", cuts)
        system.run_batch([f"link set {node.bb_if} {'down' if cut else 'up'}"], self.plan.bb_ns)
        self.apply_anycast()

    def set_withdrawn(self, edges: frozenset[str]) -> None:
        self._write_set("withdrawn.json", edges)
        self.apply_anycast()

    def anycast_choice(self) -> dict[str, str | None]:
        choice = planmod.anycast_choice(self.plan, self.regions, self.cut_set() | self.withdrawn_set(),
                                        self.cut_regions())
        return {region: (edge.name if edge else None) for region, edge in choice.items()}

    def apply_anycast(self) -> None:
        """Point every region's anycast route at its nearest edge that is neither cut nor withdrawn."""
        choice = planmod.anycast_choice(self.plan, self.regions, self.cut_set() | self.withdrawn_set(),
                                        self.cut_regions())
        # The delay line first (it must know where a packet will go before the kernel sends it there).
        _write_delay_config(self.plan, self.run_dir, choice)
        pid = system.read_pid(self.run_dir / "delayline.ready")
        if pid is not None and system.runs(pid, "netns_lab.delayline", str(self.run_dir)):
            system.kill_pids([pid], signal.SIGHUP)
        system.run_batch(planmod.anycast_lines(self.plan, choice), self.plan.bb_ns)

    # -- host services -------------------------------------------------------------------------

    def stop_service(self, node_name: str, service: str) -> None:
        """Stop a host service (`edge-gru`, `proxy`) until `start_service`; a stopped proxy withdraws its
        edge's anycast route at once."""
        name = f"{self.plan.node(node_name).name}.{service}"
        spec = self.run_dir / "services" / f"{name}.json"
        if not spec.exists():
            if (self.run_dir / "stopped" / f"{name}.json").exists():
                return
            raise LabStateError(f"no service {service!r} on {node_name} (services run: {', '.join(self.groups())})")
        spec.replace(self.run_dir / "stopped" / spec.name)
        _wait(f"{name} to stop", lambda: not _running(self.run_dir, name), READY_TIMEOUT, self.run_dir)
        if service == "proxy" and self.supervisor_pid() is not None:
            _wait("the anycast withdrawal", lambda: node_name in self.withdrawn_set(), READY_TIMEOUT, self.run_dir)

    def start_service(self, node_name: str, service: str) -> None:
        name = f"{self.plan.node(node_name).name}.{service}"
        stopped = self.run_dir / "stopped" / f"{name}.json"
        if stopped.exists():
            stopped.replace(self.run_dir / "services" / stopped.name)
        elif not (self.run_dir / "services" / f"{name}.json").exists():
            raise LabStateError(f"no service {service!r} on {node_name}")
        _wait(f"{name} to start", lambda: _running(self.run_dir, name), READY_TIMEOUT, self.run_dir)
        if service == "proxy" and self.supervisor_pid() is not None:
            _wait("the anycast announcement", lambda: node_name not in self.withdrawn_set(), READY_TIMEOUT,
                  self.run_dir)

    # -- running things in nodes ---------------------------------------------------------------

    def netns_of(self, name: str) -> str:
        """A node's namespace, or a machine's (by its machine id)."""
        if name in ("bb", "backbone"):
            return self.plan.bb_ns
        if any(n.name == name for n in self.plan.nodes):
            return self.plan.node(name).ns
        ns = self.plan.machine_ns(name)
        if (system.NETNS_DIR / ns).exists():
            return ns
        raise LabStateError(f"no node or machine {name!r} in lab {self.lab_id}")

    def exec_argv(self, name: str, argv: Sequence[str]) -> list[str]:
        """`ip netns exec NS ARGV`: the operator's view (root, the host's files) of a node's or a machine's network
        namespace; in a machine, with the machine's environment (FLY_*). `app_exec_argv` runs as the app does."""
        ns = self.netns_of(name)
        env: list[str] = []
        if ns == self.plan.machine_ns(name):
            doc = self.machine_record(name)
            if doc is not None:
                env = ["env", *(f"{k}={v}" for k, v in sorted(doc.get("env", {}).items()))]
        return ["ip", "netns", "exec", ns, *env, *argv]

    def app_exec_argv(self, machine_id: str, argv: Sequence[str]) -> list[str]:
        """Inside a running machine's sandbox, as its app: its mount, PID, UTS, IPC and network namespaces
        (`nsenter` into the sandbox's pid 1), its unprivileged uid, no capabilities, its environment."""
        doc = self.machine_record(machine_id)
        status = None
        for path in self.run_dir.glob(f"agents/*/machines/{machine_id}.status"):
            with contextlib.suppress(OSError):
                status = path.read_text()
        inner = None
        for line in (status or "").splitlines():
            with contextlib.suppress(ValueError):
                inner = json.loads(line).get("child-pid", inner)
        if doc is None or not isinstance(inner, int):
            raise LabStateError(f"machine {machine_id} is not running in lab {self.lab_id}")
        uid = str(int(doc["uid"]))
        env = [f"{k}={v}" for k, v in sorted(doc.get("env", {}).items())]
        return ["nsenter", "-t", str(inner), "-m", "-u", "-i", "-n", "-p", "-r", "-w",
                "/usr/bin/setpriv", "--reuid", uid, "--regid", uid, "--clear-groups", "--bounding-set", "-all",
                "--inh-caps", "-all", "--no-new-privs", "--", "/usr/bin/env", "-i", *env, *argv]

    def app_exec(self, machine_id: str, argv: Sequence[str],
                 timeout: float | None = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.app_exec_argv(machine_id, argv), capture_output=True, text=True, timeout=timeout)

    def exec(self, name: str, argv: Sequence[str], timeout: float | None = 60.0,
             check: bool = False, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command in a node's (or machine's) namespace and capture its output."""
        return subprocess.run(self.exec_argv(name, argv), capture_output=True, text=True, timeout=timeout,
                              check=check, input=input)

    # -- status --------------------------------------------------------------------------------

    def service_status(self) -> dict[str, Any]:
        try:
            status: dict[str, Any] = json.loads((self.run_dir / "status.json").read_text())
            return status
        except (OSError, ValueError):
            return {}

    def groups(self) -> list[str]:
        """The sixpn CLI groups (mesh, dns, proxy) whose services this lab runs."""
        try:
            return [str(g) for g in json.loads((self.run_dir / "groups.json").read_text())]
        except (OSError, ValueError):
            return []

    def service_running(self, node_name: str, service: str) -> bool:
        return _running(self.run_dir, f"{self.plan.node(node_name).name}.{service}")

    def supervisor_pid(self) -> int | None:
        pid = system.read_pid(self.run_dir / "supervisor.pid")
        return pid if pid is not None and system.runs(pid, "netns_lab.supervisor", str(self.run_dir)) else None

    def status(self) -> dict[str, Any]:
        svc = self.service_status()
        for path in (self.run_dir / "stopped").glob("*.*.json"):  # host services stopped with `lab stop`
            svc.setdefault(path.name.removesuffix(".json"), {"running": False, "stopped": True})
        cuts = self.cut_set()
        cut_regions = self.cut_regions()
        withdrawn = self.withdrawn_set()
        stream_seq, stream_error = fleet.stream_seq(self.run_dir) if self.has_cluster else (None, "")
        nodes = []
        for node in self.plan.nodes:
            row: dict[str, Any] = {
                "name": node.name, "role": node.role, "region": node.region, "netns": node.ns,
                "underlay4": str(node.v4), "underlay6": str(node.v6), "cut": node.name in cuts,
                "region_cut": node.region in cut_regions, "anycast_withdrawn": node.name in withdrawn,
                "wg_interface": self.plan.wg_ifname(node) if node.is_host else None,
                "services": {k.split(".", 1)[1]: v for k, v in svc.items() if k.startswith(node.name + ".")},
            }
            if node.is_host and self.replicated:
                seq = fleet.replica_seq(fleet.host_dir(self.run_dir, node.name) / "state")
                row["replica_seq"] = seq
                row["lag"] = None if seq is None or stream_seq is None else max(stream_seq - seq, 0)
            nodes.append(row)
        machines = []
        try:
            with self.catalog() as cat:
                state = cat.snapshot()
            for m in sorted(state.machines.values(), key=lambda m: (m.app, m.region, m.id)):
                record = self.machine_record(m.id) or {}
                machines.append({"id": m.id, "app": m.app, "region": m.region, "host": m.host, "address": m.address,
                                 "desired": m.desired, "state": m.state, "netns": self.plan.machine_ns(m.id),
                                 "pid": record.get("pid"), "restarts": m.restarts, "exit_code": m.exit_code,
                                 "health": m.health})
        except CatalogError:
            pass
        return {
            "lab": self.lab_id, "run_dir": str(self.run_dir), "state_dir": str(self.state_dir),
            "catalog": self.catalog_mode, "operator_config": str(self.operator_config),
            "nats": {"servers": [n.name for n in planmod.nats_hosts(self.plan)] if self.has_cluster else [],
                     "stream_seq": stream_seq, "error": stream_error},
            "cut_regions": sorted(cut_regions),
            "supervisor_pid": self.supervisor_pid(), "scale": self.topology.scale, "service_groups": self.groups(),
            "anycast": {"ipv4": str(planmod.ANYCAST4), "ipv6": str(planmod.ANYCAST6),
                        "edge_for": self.anycast_choice()},
            "delayline": svc.get("delayline", {}), "nodes": nodes, "machines": machines,
        }


# -- building and tearing down --------------------------------------------------------------------


def _running(run_dir: Path, name: str) -> bool:
    pid = system.read_pid(run_dir / "pids" / f"{name}.pid")
    return pid is not None and system.alive(pid)


def _topology_text(topo: topology.Topology | str | Path | None) -> str:
    if topo is None:
        return topology.DEFAULT_TOML
    if isinstance(topo, topology.Topology):
        return topology_to_toml(topo)
    path = Path(topo)
    try:
        text = path.read_text()
    except OSError as exc:
        raise LabError(f"{path}: {exc.strerror}") from exc
    topology.load(path)  # validate now, with the file name in the error
    return text


def topology_to_toml(topo: topology.Topology) -> str:
    lines = [f"scale = {topo.scale!r}"]
    for r in topo.regions:
        lines += [f"[regions.{r.code}]", f"edges = {r.edges}", f"workers = {r.workers}",
                  f"gateway = {str(r.gateway).lower()}", f"client = {str(r.client).lower()}"]
    lines += [f"[orgs.{o}]" for o in topo.orgs]
    for lp in topo.laptops:
        lines += [f"[laptops.{lp.name}]", f'region = "{lp.region}"']
    return "\n".join(lines) + "\n"


def _build(lab_id: str, text: str, run_dir: Path, owner_pid: int | None, catalog_mode: str = "embedded",
           cluster: bool = False) -> None:
    plan = planmod.make_plan(lab_id, topology.loads(text))
    # 0700 throughout (catalog, logs, keys, specs; `catalog.private`), whatever the umask of who ran `lab up`.
    private_dir(run_dir)
    for sub in ("state", "logs", "services", "pids", "stopped", "keys", "agents"):
        private_dir(run_dir / sub)
    (run_dir / "starting.pid").write_text(f"{os.getpid()}\n")  # `down_orphans` leaves a lab being built alone
    (run_dir / "share").mkdir(exist_ok=True)
    os.chmod(run_dir / "share", 0o1777)  # machines' apps run as their own unprivileged uids
    fleet.write_fleet(plan, run_dir, catalog_mode, cluster)
    if catalog_mode == "replicated":  # registered with the host (embedded: each mesh agent makes and writes its own)
        fleet.write_host_keys(plan, run_dir / "keys")
    (run_dir / "lab.json").write_text(json.dumps({"lab_id": lab_id, "topology": text, "owner_pid": owner_pid,
                                                  "catalog": catalog_mode, "cluster": cluster}))
    system.run_batch(planmod.netns_lines(plan))
    _laptop_resolv_views(plan)
    system.write_sysctls(plan.bb_ns, planmod.BACKBONE_SYSCTLS)
    for node in plan.nodes:
        system.write_sysctls(node.ns, planmod.HOST_SYSCTLS)
    system.run_batch(planmod.backbone_lines(plan), plan.bb_ns)
    choice = planmod.anycast_choice(plan, default_regions(), frozenset())
    _write_delay_config(plan, run_dir, choice)
    rules = planmod.backbone_rule_lines(plan)
    system.run_batches([
        Batch(rules, plan.bb_ns, "-4"), Batch(rules, plan.bb_ns, "-6"),
        Batch(planmod.anycast_lines(plan, choice), plan.bb_ns),
        *(Batch(planmod.node_lines(plan, node), node.ns) for node in plan.nodes),
    ])


def _laptop_resolv_views(plan: Plan) -> None:
    """Give each laptop its own /etc/resolv.conf view before anyone runs wg-quick there.

    `ip netns exec` bind-mounts /etc/netns/<ns>/resolv.conf over /etc/resolv.conf only when the file exists;
    without it, the resolvconf that wg-quick calls for its `DNS =` line would rewrite the machine's real one.
    """
    for node in plan.nodes:
        if node.role == "laptop":
            etc = ETC_NETNS / node.ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "resolv.conf").write_text(f"# {node.name}: wg-quick's resolvconf writes here\n")


def _write_delay_config(plan: Plan, run_dir: Path, choice: dict[str, planmod.Node | None]) -> None:
    table = default_regions()
    scale = plan.topology.scale
    codes = [r.code for r in plan.regions]
    config = DelayConfig(
        tuns={r.code: r.tun for r in plan.regions},
        subnets=tuple([(r.net4, r.code) for r in plan.regions] + [(r.net6, r.code) for r in plan.regions]),
        rtt_ms={a: {b: table.rtt(a, b) * scale for b in codes} for a in codes},
        anycast_addrs=(planmod.ANYCAST4, planmod.ANYCAST6),
        anycast={code: (edge.region if edge else None) for code, edge in choice.items()},
    )
    tmp = run_dir / "delay.json.tmp"
    tmp.write_text(json.dumps(config.to_json()))
    tmp.replace(run_dir / "delay.json")


def _teardown(lab_id: str) -> list[str]:
    run_dir = RUN_ROOT / lab_id
    found: list[str] = []
    prefix = f"{lab_id}-"
    namespaces = [n for n in system.list_netns() if n.startswith(prefix)]
    # The supervisor first, so it restarts nothing while its children are killed.
    sup = system.read_pid(run_dir / "supervisor.pid")
    if sup is not None and system.runs(sup, "netns_lab.supervisor", str(run_dir)):
        system.kill_pids([sup])
        found.append(f"supervisor {sup}")
    for _ in range(20):
        pids = system.pids_with_marker(lab_id) | system.pids_in_netns(namespaces)
        pids.discard(os.getpid())
        if not pids:
            break
        found += [f"process {p}" for p in sorted(pids)]
        system.kill_pids(pids)
        time.sleep(0.05)
    if namespaces:
        system.run_batch([f"netns del {n}" for n in namespaces], force=True)
        found += [f"netns {n}" for n in namespaces]
    for path in sorted(ETC_NETNS.glob(f"{prefix}*")):
        shutil.rmtree(path, ignore_errors=True)
        found.append(str(path))
    for path in sorted(WG_SOCKETS.glob(f"{lab_id}wg*.sock")):
        if path.name[len(lab_id) + 2:-5].isdigit():
            path.unlink(missing_ok=True)
            found.append(str(path))
    if run_dir.exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        found.append(str(run_dir))
    return found
