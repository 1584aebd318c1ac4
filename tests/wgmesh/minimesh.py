"""A throwaway mesh of network namespaces for the wgmesh adapter tests (names start `wgt-`).

Hosts share one underlay bridge (192.0.2.0/24, a documentation range) in their own namespace; machines
hang off their worker by a veth the way the lab attaches them; each host runs the real `sixpn mesh agent`
under `ip netns exec`. Everything is removed in `close()`, which the fixture calls even on failure.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from catalog import Catalog, Machine, addressing
from wgmesh.applied import read_applied


@dataclass
class MiniMesh:
    root: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(3)[:5])
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    hosts: dict[str, int] = field(default_factory=dict)
    netns_etc: list[Path] = field(default_factory=list)
    machine_ns: dict[str, str] = field(default_factory=dict)
    slots: int = 0

    def __post_init__(self) -> None:
        self.state = self.root / "state"
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.cat = Catalog(self.state)
        self.bridge = self.add_ns("ul")
        self.ip(self.bridge, "link", "add", "br0", "type", "bridge")
        self.ip(self.bridge, "link", "set", "br0", "up")

    # -- plumbing --------------------------------------------------------------------------------

    def ns(self, node: str) -> str:
        return f"wgt-{self.tag}-{node}"

    def run(self, ns: str, *argv: str, check: bool = True, timeout: float = 30,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=check,
                              timeout=timeout, input=input)

    def ip(self, ns: str, *argv: str) -> None:
        subprocess.run(["ip", "-n", ns, *argv], check=True, capture_output=True, text=True)

    def add_ns(self, node: str) -> str:
        name = self.ns(node)
        for attempt in range(3):
            # `ip netns add` can lose a race on the shared /run/netns mount with another process creating
            # namespaces at the same moment; a retry is what iproute2's own users do.
            done = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
            if done.returncode == 0:
                break
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            if attempt == 2:
                raise AssertionError(f"ip netns add {name}: {done.stderr.strip()}")
            time.sleep(0.2)
        self.namespaces.append(name)
        self.ip(name, "link", "set", "lo", "up")
        return name

    def spawn(self, ns: str, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(self.logs / log, "ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def underlay(self, node: str, index: int) -> tuple[str, str]:
        ns = self.add_ns(node)
        self.ip(ns, "link", "add", "ul", "type", "veth", "peer", "name", f"p{index}", "netns", self.bridge)
        self.ip(self.bridge, "link", "set", f"p{index}", "master", "br0", "up")
        address = f"192.0.2.{index}"
        self.ip(ns, "addr", "add", f"{address}/24", "dev", "ul")
        self.ip(ns, "link", "set", "ul", "up")
        return ns, address

    # -- the world -------------------------------------------------------------------------------

    def ifname(self, host: str) -> str:
        return f"wgt{self.tag}w{self.hosts[host]}"

    def add_host(self, name: str, region: str, role: str, start: bool = True) -> str:
        index = len(self.hosts) + 1
        ns, address = self.underlay(name, index)
        self.run(ns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        self.cat.register_host(name, region, role, address)  # type: ignore[arg-type]
        self.hosts[name] = index
        if start:
            self.start_agent(name)
        return ns

    def key_file(self, host: str) -> Path:
        return self.root / "keys" / f"{host}.key"

    def start_agent(self, host: str) -> None:
        argv = [sys.executable, "-m", "sixpn.cli", "--state", str(self.state), "mesh", "agent", "--host", host,
                "--interface", self.ifname(host), "--key-file", str(self.key_file(host)), "--resync", "2"]
        self.agents[host] = self.spawn(self.ns(host), argv, f"{host}.mesh.log")

    def add_machine(self, app: str, host: str, ports: tuple[int, ...] = (8080, 9090)) -> Machine:
        machine = self.cat.create_machine(app, host, state="started")
        self.slots += 1
        ns = self.add_ns(f"m{self.slots}")
        worker = self.ns(host)
        fields = addressing.parse(machine.address)
        gw = addressing.machine_gateway(fields.network_id, fields.host_id, fields.slot_id)
        link = addressing.machine_link(machine.id)  # the name the isolation table expects
        self.ip(worker, "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self.ip(worker, "addr", "add", f"{gw}/112", "dev", link, "nodad")
        self.ip(worker, "link", "set", link, "up")
        self.ip(ns, "addr", "add", f"{machine.address}/112", "dev", "eth0", "nodad")
        self.ip(ns, "link", "set", "eth0", "up")
        self.ip(ns, "-6", "route", "add", "default", "via", str(gw))
        for port in ports:
            server = [sys.executable, "-m", "http.server", "--bind", "::", str(port)]
            self.spawn(ns, server, f"m{self.slots}.{port}.log")
        self.machine_ns[machine.id] = ns
        return machine

    def resolv_conf(self, ns: str) -> None:
        """Give `ns` its own /etc/resolv.conf view, so openresolv under `ip netns exec` writes only there."""
        path = Path("/etc/netns") / ns
        path.mkdir(parents=True, exist_ok=True)
        (path / "resolv.conf").write_text("# wgmesh test\n")
        self.netns_etc.append(path)

    def wait_applied(self, host: str, timeout: float = 15.0) -> None:
        version = self.cat.version()
        deadline = time.monotonic() + timeout
        while (read_applied(self.state, host) or -1) < version:
            agent = self.agents[host]
            if agent.poll() is not None:
                raise AssertionError(f"agent of {host} exited: {(self.logs / f'{host}.mesh.log').read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{host} did not apply v{version}")
            time.sleep(0.02)

    def wait_all(self) -> None:
        for host in self.agents:
            self.wait_applied(host)

    def wg_dump(self, host: str) -> list[list[str]]:
        out = self.run(self.ns(host), "wg", "show", self.ifname(host), "dump").stdout
        return [line.split("\t") for line in out.splitlines()[1:]]

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        for path in self.netns_etc:
            shutil.rmtree(path, ignore_errors=True)
        self.cat.close()
