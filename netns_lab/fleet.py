"""The lab as a fleet: every host's config file, credentials and state directory, the NATS servers' configs, and
the operator's seat, written exactly as `sixpn host init` / `sixpn host credentials` write them on real hosts.

    RUN/hosts/<host>/host.toml          the host's config (sixpn --host-config)
    RUN/hosts/<host>/nats.creds         its NATS credentials (0600, in a 0700 directory)
    RUN/hosts/<host>/state/             its replica (catalog.db) and own state; nothing shared between hosts
    RUN/hosts/<host>/nats-server.conf   on each region's NATS host (0600: it holds the route password)
    RUN/hosts/<host>/state/nats/        that server's JetStream store
    RUN/operator/host.toml              the operator's seat (role operator, admin credentials), reaching the
    RUN/operator/admin.creds            cluster through the door (natsdoor.py): `sixpn lab env` exports it
    RUN/operator/users.toml             the cluster's users table (bcrypt hashes)
    RUN/door.json                       the door's ports

With the embedded catalog (the lab's `catalog = "embedded"` switch) the host configs say so and every host's
state directory is the lab's one shared `RUN/state`, as before the replicated catalog existed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalog import CatalogError, default_regions, natsconf
from catalog.fleetconfig import (
    DEFAULT_STREAM,
    CatalogConfig,
    Credentials,
    HostConfig,
    load_host_config,
    render_host_config,
    write_private,
)
from netns_lab import plan as planmod
from netns_lab.errors import LabError
from netns_lab.plan import Node, Plan

#: bcrypt cost of the lab's users: every connect makes a server check a password (cost 11, a real fleet's
#: default, takes 0.15 s of CPU a check; a lab starts a dozen clients at once on two cores).
LAB_BCRYPT_COST = 6
STREAM_REPLICAS = 3
CATALOG_MODES = ("embedded", "replicated")


def hosts_dir(run_dir: Path) -> Path:
    return run_dir / "hosts"


def host_dir(run_dir: Path, name: str) -> Path:
    return hosts_dir(run_dir) / name


def host_config_path(run_dir: Path, name: str) -> Path:
    return host_dir(run_dir, name) / "host.toml"


def operator_dir(run_dir: Path) -> Path:
    return run_dir / "operator"


def operator_config_path(run_dir: Path) -> Path:
    return operator_dir(run_dir) / "host.toml"


def nats_conf_path(run_dir: Path, name: str) -> Path:
    return host_dir(run_dir, name) / "nats-server.conf"


@dataclass(frozen=True)
class Door:
    netns: str
    ports: dict[str, int]  # region -> port on 127.0.0.1 in the root namespace
    targets: dict[str, tuple[str, int]]  # region -> its NATS server's (underlay address, client port)

    def to_json(self) -> dict[str, Any]:
        return {"netns": self.netns, "routes": [
            {"region": r, "port": self.ports[r], "host": self.targets[r][0], "target_port": self.targets[r][1]}
            for r in self.ports]}

    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{port}" for port in self.ports.values()]


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def write_fleet(plan: Plan, run_dir: Path, catalog_mode: str, cluster: bool) -> Door | None:
    """Write every host's files and the operator's; returns the door to open (None without a cluster)."""
    if catalog_mode not in CATALOG_MODES:
        raise LabError(f"catalog must be one of {', '.join(CATALOG_MODES)}, not {catalog_mode!r}")
    replicated = catalog_mode == "replicated"
    if replicated and not cluster:
        raise LabError("a replicated catalog needs the NATS cluster")
    for d in (hosts_dir(run_dir), operator_dir(run_dir)):
        d.mkdir(mode=0o700, exist_ok=True)
    nats = planmod.nats_cluster(plan) if cluster else None
    door = None
    creds: dict[str, Credentials] = {}
    if nats is not None:
        ports = _free_ports(len(nats.servers))
        door = Door(plan.bb_ns, {s.region: p for s, p in zip(nats.servers, ports, strict=True)},
                    {s.region: (s.address, s.client_port) for s in nats.servers})
        write_private(run_dir / "door.json", json.dumps(door.to_json()))
        creds = {u: natsconf.mint_credentials(u) for u in (natsconf.ADMIN_USER, natsconf.ROUTE_USER)}
        creds.update({natsconf.host_user(n.name): natsconf.mint_credentials(natsconf.host_user(n.name))
                      for n in plan.hosts()})
        with ThreadPoolExecutor(4) as pool:  # bcrypt releases the GIL in libcrypt
            hashed = list(pool.map(lambda c: _user(c, plan), creds.values()))
        users = {u.user: u for u in hashed}
        write_private(operator_dir(run_dir) / "users.toml", natsconf.render_users(users))
        write_private(operator_dir(run_dir) / "admin.creds", natsconf.render_credentials(creds["admin"]))
    regions = default_regions()
    for node in plan.hosts():
        hdir = host_dir(run_dir, node.name)
        hdir.mkdir(mode=0o700, exist_ok=True)
        state = hdir / "state" if replicated else run_dir / "state"
        state.mkdir(mode=0o700, exist_ok=True)
        creds_path = hdir / "nats.creds"
        if nats is not None:
            write_private(creds_path, natsconf.render_credentials(creds[natsconf.host_user(node.name)]))
        config = HostConfig(
            name=node.name, role=node.role, region=node.region, underlay=str(node.v4), state_dir=state,
            catalog=CatalogConfig(mode=catalog_mode,
                                  nats=tuple(nats.client_urls(node.region, regions)) if nats else (),
                                  credentials=creds_path if nats else None, stream=DEFAULT_STREAM))
        write_private(hdir / "host.toml", render_host_config(config))
        if nats is not None and any(s.name == node.name for s in nats.servers):
            store = (state if replicated else hdir) / "nats"  # never the shared embedded state directory
            text = natsconf.render_server_conf(nats, node.name, store, users,
                                               creds[natsconf.ROUTE_USER].password)
            write_private(nats_conf_path(run_dir, node.name), text)
    op_state = operator_dir(run_dir) / "state" if replicated else run_dir / "state"
    op_state.mkdir(mode=0o700, exist_ok=True)
    operator = HostConfig(
        name="operator", role="operator", region=plan.regions[0].code, underlay="", state_dir=op_state,
        catalog=CatalogConfig(mode=catalog_mode, nats=tuple(door.urls()) if door else (),
                              credentials=operator_dir(run_dir) / "admin.creds" if door else None))
    write_private(operator_config_path(run_dir), render_host_config(operator))
    return door


def write_host_keys(plan: Plan, keys_dir: Path) -> dict[str, str]:
    """Each host's WireGuard key (`mesh agent --key-file`), made before the host is registered, so the operator
    registers the public key with the host (`sixpn host register --public-key`): a host's credentials cannot
    write global rows, so its mesh agent must find its key already in the catalog. Returns name -> public."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    publics = {}
    for node in plan.hosts():
        key = X25519PrivateKey.generate()
        private = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        write_private(keys_dir / f"{node.name}.key", base64.b64encode(private).decode() + "\n")
        publics[node.name] = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    return publics


def host_public_keys(plan: Plan, keys_dir: Path) -> dict[str, str]:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    out = {}
    for node in plan.hosts():
        raw = base64.b64decode((keys_dir / f"{node.name}.key").read_text().strip())
        public = X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        out[node.name] = base64.b64encode(public).decode()
    return out


def _user(creds: Credentials, plan: Plan) -> natsconf.NatsUser:
    if creds.user in (natsconf.ADMIN_USER, natsconf.ROUTE_USER):
        return natsconf.user_for(creds.user, creds.password, cost=LAB_BCRYPT_COST)
    host = creds.user.removeprefix(natsconf.HOST_USER_PREFIX)
    return natsconf.user_for("host", creds.password, host, cost=LAB_BCRYPT_COST)


# -- talking to the cluster as the operator -------------------------------------------------------------


async def _prefer_leader(link: Any, stream: str, server: str, deadline: float) -> None:
    """Ask the stream's leader to step down in favour of `server` (JetStream's stepdown with a preferred
    server), and wait (bounded) until it has. Best effort: a leader elsewhere only makes writes slower."""
    js = await link.connect()
    info = await js.stream_info(stream)
    if info.cluster is None or info.cluster.leader == server:
        return
    request = json.dumps({"placement": {"preferred": server}}).encode()
    try:
        await link.nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", request, timeout=2.0)
    except Exception:
        return
    until = min(deadline, time.monotonic() + 1.0)
    while time.monotonic() < until:
        try:
            info = await js.stream_info(stream)
            if info.cluster is not None and info.cluster.leader == server:
                return
        except Exception:
            pass
        await asyncio.sleep(0.02)


async def _init_stream(config: HostConfig, deadline: float, prefer_leader: str | None = None) -> None:
    """`sixpn catalog init --replicas 3`, retried until the cluster has a JetStream meta leader (creating a
    stream fails until then) and its three servers are known to it (an R3 stream needs three peers)."""
    from catalog.natslink import AsyncLink

    last: Exception | None = None
    while time.monotonic() < deadline:
        link = AsyncLink(config.catalog, name="sixpn-lab")
        try:
            await link.ensure_stream(STREAM_REPLICAS)
            if prefer_leader:
                await _prefer_leader(link, config.catalog.stream, prefer_leader, deadline)
            return
        except CatalogError as exc:
            last = exc
            await asyncio.sleep(0.05)
        finally:
            await link.close()
    raise LabError(f"the lab's NATS cluster did not take the catalog's stream: {last}")


def init_stream(run_dir: Path, timeout: float = 20.0, prefer_leader: str | None = None) -> None:
    """Wait until the cluster elects a JetStream meta leader, then create the catalog's stream (R3); with
    `prefer_leader`, then move the stream's leader to that server. The lab prefers the first region's server:
    with the leader in gru, a write commits once gig (8 ms away) has it too; with the leader in sjc, every
    write waits for a 175 ms round trip, and registering the lab's hosts took 1.7 s instead of 0.2 s."""
    config = load_host_config(operator_config_path(run_dir))
    asyncio.run(_init_stream(config, time.monotonic() + timeout, prefer_leader))


async def _stream_seq(config: HostConfig) -> int:
    from catalog.natslink import AsyncLink

    link = AsyncLink(config.catalog, name="sixpn-lab-status")
    try:
        return await link.last_seq()
    finally:
        await link.close()


def stream_seq(run_dir: Path) -> tuple[int | None, str]:
    """The stream's last sequence as the operator sees it, or (None, why)."""
    try:
        config = load_host_config(operator_config_path(run_dir))
        return asyncio.run(asyncio.wait_for(_stream_seq(config), 4.0)), ""
    except Exception as exc:
        return None, str(exc) or type(exc).__name__


def replica_seq(state_dir: Path) -> int | None:
    """A host's replica's applied stream sequence (catalog.db's meta seq), None without a replica yet."""
    db = state_dir / "catalog.db"
    if not db.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.5)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key='seq'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return int(row[0]) if row else 0


def host_state_dir(run_dir: Path, node: Node) -> Path:
    return load_host_config(host_config_path(run_dir, node.name)).state_dir
