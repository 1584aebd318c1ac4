"""The mesh agent of one host: owns its WireGuard interface, keypair, mesh routes and isolation table,
and follows the catalog live.

Each reconcile reads the observed state (`wg show dump`, netlink), plans against the catalog, applies
only the difference, then records the catalog version it has applied in `<state>/mesh/<host>.applied`
(JSON, this host's own status). A reconcile also runs every `resync` seconds so drift (someone removed a
peer by hand) heals; an empty diff applies nothing.

`sixpn wg create|remove|reset` may run on any host of the fleet, so what they wait on travels in the
catalog: after applying a change to a laptop peer attached here (and once at start), the agent reports
the catalog position it has applied (`Catalog.observe_host`, host-owned). Only then: reporting after
every pass would itself be a change every agent sees, and a write per host per change.
"""

from __future__ import annotations

import logging
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from catalog import Catalog, CatalogError, Change, Follower, Host, NotFound, Peer, State
from wgmesh import desired, keys, nftrules, wgctl
from wgmesh.applied import write_applied
from wgmesh.errors import MeshError
from wgmesh.netlink import Netlink, NetOp
from wgmesh.plan import Op, RemovePeer, SetListenPort, SetPeer, SetPrivateKey, WgOp, plan

log = logging.getLogger("wgmesh.agent")
POLL = 0.02
DISCARD_PORT = 9  # RFC 863
RETRY = 0.5


@dataclass(frozen=True)
class AgentConfig:
    state_dir: Path
    host: str
    ifname: str
    key_file: Path
    listen_port: int = desired.WG_PORT
    resync: float = 10.0
    wg_log: Path | None = None
    userspace: bool = False  # wireguard-go even where the kernel module exists


def set_sysctls() -> None:
    """Strict reverse-path filtering for IPv4 (RFC 3704 §2.2); for IPv6 the nft table binds sources to
    interfaces (nftrules)."""
    for path in ("/proc/sys/net/ipv4/conf/all/rp_filter", "/proc/sys/net/ipv4/conf/default/rp_filter"):
        try:
            Path(path).write_text("1\n")
        except OSError as exc:
            log.warning("cannot set %s: %s", path, exc.strerror)


def apply_nft(script: str) -> None:
    try:
        done = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=30,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MeshError(f"nft: {exc}") from None
    if done.returncode != 0:
        raise MeshError(f"nft: {done.stderr.strip()}")


def describe(op: Op) -> str:
    if isinstance(op, SetPeer):
        nets = ",".join(sorted(str(n) for n in op.spec.allowed_ips))
        return f"{'add' if op.new else 'update'} peer {op.spec.label} {op.spec.public_key[:8]}… allowed-ips {nets}"
    if isinstance(op, RemovePeer):
        return f"remove peer {op.public_key[:8]}…"
    if isinstance(op, SetPrivateKey):
        return f"load private key of {op.public_key[:8]}… from key file"
    return type(op).__name__ + " " + " ".join(str(v) for v in vars(op).values())


class Agent:
    def __init__(self, config: AgentConfig, catalog: Catalog) -> None:
        self.config = config
        self.catalog = catalog
        # A key that already existed means our peers may hold sessions with an earlier incarnation of us.
        self.renew = config.key_file.exists()
        self.pair = keys.load_or_create(config.key_file)
        self.nft_script = ""
        self.last_want: desired.Desired | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.net: Netlink | None = None

    def start(self, stop: threading.Event) -> None:
        host = self._wait_for_host(stop)
        if host.public_key != self.pair.public:
            self.catalog.set_host_key(self.config.host, self.pair.public)
        set_sysctls()
        self._start_interface()

    def _wait_for_host(self, stop: threading.Event) -> Host:
        """Our host row; a host registered just after its agent starts is waited for, not an error."""
        warned = False
        while True:
            try:
                return self.catalog.host(self.config.host)
            except NotFound:
                if not warned:
                    log.warning("host %s is not in the catalog yet; waiting", self.config.host)
                    warned = True
            if stop.wait(0.2):
                raise MeshError(f"stopped while waiting for host {self.config.host} to be registered")

    def _start_interface(self) -> None:
        if self.net is not None:
            self.net.close()
        subprocess.run(["ip", "link", "del", self.config.ifname], capture_output=True, check=False)  # stale
        # Kernel WireGuard where the module exists (spec), else wireguard-go as our supervised child.
        self.proc = None
        kernel = not self.config.userspace and subprocess.run(
            ["ip", "link", "add", self.config.ifname, "type", "wireguard"], capture_output=True, check=False
        ).returncode == 0
        if not kernel:
            self.proc = wgctl.start_wireguard_go(self.config.ifname, self.config.wg_log)
        self.net = Netlink(self.config.ifname)
        self.net.link_up(self.config.ifname)
        how = "kernel" if self.proc is None else f"wireguard-go pid {self.proc.pid}"
        log.info("interface %s up (%s), public key %s", self.config.ifname, how, self.pair.public)

    def stop(self) -> None:
        if self.proc is not None:
            wgctl.stop(self.proc)
        else:  # a kernel interface outlives us unless removed
            subprocess.run(["ip", "link", "del", self.config.ifname], capture_output=True, check=False)
        if self.net is not None:
            self.net.close()

    def reconcile(self, state: State, force: bool = True) -> list[Op]:
        """One pass: plan against what is there now and apply only that; returns the ops it applied.

        Unforced (a catalog change), a pass whose desired state and ruleset equal the last applied ones
        skips reading the interface: most catalog writes (a machine's state, an app's metadata) change
        nothing here. Forced passes (start, resync, retry) always compare with the real interface."""
        assert self.net is not None
        want = desired.compute(state, self.config.host, self.pair.public, self.config.listen_port)
        script = nftrules.render(nftrules.rules_for(state, self.config.host, self.config.ifname))
        if not force and want == self.last_want and script == self.nft_script:
            write_applied(self.config.state_dir, self.config.host, state.version, len(want.peers))
            return []
        self.last_want = None
        ops = plan(want, wgctl.show_dump(self.config.ifname), self.net.observe())
        for op in ops:
            log.info("v%d: %s", state.version, describe(op))
        for group in in_order(ops):
            if isinstance(group, list):
                wgctl.apply(self.config.ifname, group, self.config.key_file)
            else:
                self.net.apply(group)
        if script != self.nft_script:
            apply_nft(script)
            self.nft_script = script
            log.info("nft table %s %s replaced", nftrules.FAMILY, nftrules.TABLE)
        self.last_want = want
        if self.renew:
            self._renew_sessions(state)
        write_applied(self.config.state_dir, self.config.host, state.version, len(want.peers))
        return ops

    def _renew_sessions(self, state: State) -> None:
        """After a restart our peers still hold sessions with the old interface and would keep using them
        until their timers expire (up to Keepalive-Timeout + Rekey-Timeout, 15 s). One datagram to each
        peer host's mesh address makes us initiate a fresh handshake now, which replaces the stale session
        on the other side (whitepaper §6.2). Only after a restart: at a fresh start no peer has a session."""
        self.renew = False
        sent = 0
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            for host in state.hosts.values():
                if host.name == self.config.host or not host.public_key:
                    continue
                try:
                    sock.sendto(b"", (str(host.mesh_address), DISCARD_PORT))
                    sent += 1
                except OSError as exc:
                    log.warning("cannot reach %s to renew its session: %s", host.name, exc.strerror)
        log.info("renewing sessions with %d peers after a restart", sent)

    def _check_child(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            log.error("wireguard-go exited with %s; restarting the interface", self.proc.returncode)
            self.nft_script = ""
            self.last_want = None
            self.renew = True
            self._start_interface()

    def _peer_changed(self, changes: list[Change]) -> bool:
        """A laptop peer attached to this host was added, rekeyed or removed (a delete carries the last row)."""
        return any(isinstance(c.record, Peer) and c.record.host == self.config.host for c in changes)

    def run(self, stop: threading.Event) -> None:
        """Follow the catalog until `stop` is set. Synchronous on purpose: every step is a netlink call
        or a short `wg` process, and pyroute2's sync API runs its own event loop internally."""
        follower = Follower(self.catalog)
        due = 0.0  # monotonic time of the next reconcile even without a change
        report = True  # a pass to report once it succeeds: the first, and any that changes a peer of ours
        while True:
            try:
                position = self.catalog.position()  # before the poll: the state polled holds at least this
                changes = follower.poll()
            except (CatalogError, sqlite3.Error) as exc:
                log.error("reading the catalog failed (retrying): %s", exc)
                changes = []
            report = report or self._peer_changed(changes)
            if self.proc is not None and self.proc.poll() is not None:
                due = 0.0  # wireguard-go died: restart it now, not at the next resync
            forced = time.monotonic() >= due
            if changes or forced:
                try:
                    self._check_child()
                    self.reconcile(follower.state, force=forced)
                    if report:
                        self.catalog.observe_host(self.config.host, position)
                        report = False
                    if forced:
                        due = time.monotonic() + self.config.resync
                except (MeshError, CatalogError, OSError, sqlite3.Error) as exc:
                    log.error("reconcile at v%d failed (retrying): %s", follower.state.version, exc)
                    due = time.monotonic() + RETRY
            if stop.wait(POLL):
                return


def in_order(ops: list[Op]) -> list[list[WgOp] | NetOp]:
    """The planner's order kept, runs of consecutive wg ops merged into one `wg set` call."""
    out: list[list[WgOp] | NetOp] = []
    for op in ops:
        if isinstance(op, SetPrivateKey | SetListenPort | SetPeer | RemovePeer):
            if out and isinstance(out[-1], list):
                out[-1].append(op)
            else:
                out.append([op])
        else:
            out.append(op)
    return out


def run_agent(config: AgentConfig, catalog: Catalog) -> None:
    """Run until SIGTERM/SIGINT; the interface goes away with our wireguard-go child. `catalog` is the host's
    (on a fleet its replica, whose reports the host's replicator publishes); it is closed on the way out."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _sig, _frame: stop.set())
    agent = Agent(config, catalog)
    try:
        agent.start(stop)
        agent.run(stop)
        log.info("stopping")
    finally:
        agent.stop()
        catalog.close()
