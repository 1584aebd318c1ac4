"""The embedded catalog: SQLite in WAL mode in a state directory, shared by several processes.

Every write runs in one `BEGIN IMMEDIATE` transaction (writers of all processes queue on SQLite's
lock), validates against the rows as they are inside that transaction, and appends one change per
row to the `changes` log; the log's rowid is the version. A refused write raises before commit, so
it changes nothing.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Self, TypeVar

from catalog import addressing, appconfig, private, replica
from catalog.errors import CatalogError, Conflict, InvalidWrite, NotFound, WriteConflict
from catalog.models import (
    DESIRED_STATES,
    HEALTH_STATES,
    HOST_ROLES,
    MACHINE_STATES,
    OBSERVED_FIELDS,
    App,
    Change,
    Desired,
    Host,
    HostRole,
    Machine,
    MachineState,
    Network,
    Org,
    Peer,
    Record,
    decode,
    encode,
    key_of,
    kind_of,
)
from catalog.regions import RegionTable, default_regions
from catalog.state import State

R = TypeVar("R", bound=Record)
F = TypeVar("F", bound=Callable[..., Any])
WRITE_ATTEMPTS = 30


def write_op(method: F) -> F:
    """A write method: run again from the start when a replicated catalog reports that another writer
    published first (validation then sees the other write). The embedded catalog never conflicts."""

    @functools.wraps(method)
    def wrapper(self: Catalog, *args: Any, **kwargs: Any) -> Any:
        for attempt in range(WRITE_ATTEMPTS):
            try:
                return method(self, *args, **kwargs)
            except WriteConflict:
                if attempt == WRITE_ATTEMPTS - 1:
                    raise WriteConflict(f"gave up after {WRITE_ATTEMPTS} racing writes; try again") from None
                # Jittered backoff: writers that lost together must not collide again in lockstep.
                time.sleep(random.uniform(0, min(0.1, 0.002 * 2**attempt)))
        raise AssertionError("unreachable")

    return wrapper  # type: ignore[return-value]
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
PEER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")
MACHINE_ID = re.compile(r"^[0-9a-f]{14}$")
DB_FILE = "catalog.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
  kind TEXT NOT NULL, key TEXT NOT NULL, data TEXT NOT NULL, version INTEGER NOT NULL,
  PRIMARY KEY (kind, key));
CREATE TABLE IF NOT EXISTS changes (
  version INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, key TEXT NOT NULL,
  op TEXT NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS addresses (address TEXT PRIMARY KEY, owner TEXT NOT NULL);
"""


def default_state_dir() -> Path:
    env = os.environ.get("SIXPN_STATE")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/sixpn")
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "sixpn"


def check_name(value: str, what: str) -> None:
    if not NAME.match(value):
        raise InvalidWrite(f"{what} name {value!r} must be lowercase letters, digits and '-' (max 63)")


def new_machine_id() -> str:
    return secrets.token_hex(7)


class _Tx:
    """The open write transaction: reads see its own writes; `ops` records every write it made, in order
    (what a replicated catalog publishes instead of committing locally: see `catalog.replica`)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.ops: list[list[Any]] = []

    def get(self, cls: type[R], kind: str, key: str) -> R | None:
        row = self.db.execute("SELECT data FROM records WHERE kind=? AND key=?", (kind, key)).fetchone()
        if row is None:
            return None
        record = decode(kind, json.loads(row[0]))
        assert isinstance(record, cls)
        return record

    def need(self, cls: type[R], kind: str, key: str) -> R:
        record = self.get(cls, kind, key)
        if record is None:
            raise NotFound(f"no {kind} named {key!r}")
        return record

    def all(self, cls: type[R], kind: str) -> list[R]:
        rows = self.db.execute("SELECT data FROM records WHERE kind=? ORDER BY key", (kind,)).fetchall()
        return [r for r in (decode(kind, json.loads(row[0])) for row in rows) if isinstance(r, cls)]

    def _log(self, op: str, record: Record) -> int:
        kind, key = kind_of(record), key_of(record)
        cur = self.db.execute(
            "INSERT INTO changes (kind, key, op, data) VALUES (?, ?, ?, ?)",
            (kind, key, op, json.dumps(encode(record))),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def put(self, record: Record) -> None:
        self.ops.append(["put", kind_of(record), encode(record)])
        version = self._log("put", record)
        self.db.execute(
            "INSERT OR REPLACE INTO records (kind, key, data, version) VALUES (?, ?, ?, ?)",
            (kind_of(record), key_of(record), json.dumps(encode(record)), version),
        )

    def delete(self, record: Record) -> None:
        self.ops.append(["delete", kind_of(record), encode(record)])
        self._log("delete", record)
        self.db.execute("DELETE FROM records WHERE kind=? AND key=?", (kind_of(record), key_of(record)))

    def next(self, counter: str, start: int = 1) -> int:
        """The next value of a counter that never goes back: ids from it are never reused."""
        row = self.db.execute("SELECT value FROM counters WHERE name=?", (counter,)).fetchone()
        value = start if row is None else int(row[0]) + 1
        if value > addressing.MAX_ID:
            raise Conflict(f"id space {counter!r} is exhausted")
        self.set_counter(counter, value)
        return value

    def set_counter(self, counter: str, value: int) -> None:
        self.ops.append(["counter", counter, value])
        self.db.execute("INSERT OR REPLACE INTO counters (name, value) VALUES (?, ?)", (counter, value))

    def claim_address(self, address: str, owner: str) -> None:
        self.ops.append(["claim", address, owner])
        try:
            self.db.execute("INSERT INTO addresses (address, owner) VALUES (?, ?)", (address, owner))
        except sqlite3.IntegrityError:
            raise Conflict(f"address {address} is already in use") from None

    def release_address(self, address: str) -> None:
        self.ops.append(["release", address])
        self.db.execute("DELETE FROM addresses WHERE address=?", (address,))


class Catalog:
    """A handle on the catalog in `state_dir`; cheap to open, one per process or thread."""

    def __init__(self, state_dir: str | Path | None = None, regions: RegionTable | None = None) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.regions = regions or default_regions()
        self.written = 0  # the position of this handle's last write (`position()`'s order), 0 before any
        try:
            # Every org's config and [env] are in here: 0700, and the database 0600 before SQLite opens it
            # (SQLite gives its -wal and -shm files the database file's mode; older ones are tightened).
            private.private_dir(self.state_dir)
            db_path = private.private_file(self.state_dir / DB_FILE)
            for suffix in ("-wal", "-shm"):
                private.tighten(self.state_dir / (DB_FILE + suffix))
            self.db = sqlite3.connect(db_path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA busy_timeout=30000")
            self._ensure_schema()
        except (OSError, sqlite3.Error) as exc:
            raise CatalogError(f"cannot open catalog in {self.state_dir}: {exc}") from exc

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_schema(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for statement in (_SCHEMA + replica.SCHEMA).strip().split(";"):
                if statement.strip():
                    self.db.execute(statement)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    @contextmanager
    def _write(self, owner: str | None = None) -> Iterator[_Tx]:
        """One write: validated and made inside one transaction. `owner` names the host a host-owned write
        belongs to (None: a global write); the embedded catalog commits both alike."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            tx = _Tx(self.db)
            yield tx
            if tx.ops:
                self.written = self.version()
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- reads ---------------------------------------------------------------------------------

    def version(self) -> int:
        row = self.db.execute("SELECT COALESCE(MAX(version), 0) FROM changes").fetchone()
        return int(row[0])

    def position(self) -> int:
        """Where this catalog is in the one order every replica shares: here the version itself; on a replica
        the stream sequence it has applied (local versions differ between replicas, positions do not). A
        process that reads the position before polling its changes has applied at least that much after."""
        return self.version()

    def snapshot(self) -> State:
        """Every row at one version, read in one transaction (WAL gives it a consistent view)."""
        self.db.execute("BEGIN")
        try:
            version = self.version()
            rows = self.db.execute("SELECT kind, data FROM records").fetchall()
        finally:
            self.db.execute("COMMIT")
        state = State(version=version)
        for kind, data in rows:
            state.put(decode(kind, json.loads(data)))
        return state

    def changes_since(self, version: int, limit: int = 10_000) -> list[Change]:
        rows = self.db.execute(
            "SELECT version, kind, op, data FROM changes WHERE version > ? ORDER BY version LIMIT ?",
            (version, limit),
        ).fetchall()
        return [Change(version=v, op=op, record=decode(kind, json.loads(data))) for v, kind, op, data in rows]

    def _read(self, cls: type[R], kind: str, key: str) -> R:
        row = self.db.execute("SELECT data FROM records WHERE kind=? AND key=?", (kind, key)).fetchone()
        if row is None:
            raise NotFound(f"no {kind} named {key!r}")
        record = decode(kind, json.loads(row[0]))
        assert isinstance(record, cls)
        return record

    def org(self, name: str) -> Org:
        return self._read(Org, "org", name)

    def app(self, name: str) -> App:
        return self._read(App, "app", name)

    def host(self, name: str) -> Host:
        return self._read(Host, "host", name)

    def machine(self, machine_id: str) -> Machine:
        return self._read(Machine, "machine", machine_id)

    def network(self, name: str) -> Network:
        return self._read(Network, "network", name)

    def peer(self, name: str) -> Peer:
        return self._read(Peer, "peer", name)

    # -- orgs, networks, apps -------------------------------------------------------------------

    @write_op
    def create_org(self, name: str) -> Org:
        check_name(name, "org")
        with self._write() as tx:
            if tx.get(Org, "org", name):
                raise Conflict(f"org {name!r} already exists")
            network = self._new_network(tx, name, name)
            org = Org(name=name, network=network.name)
            tx.put(org)
        return org

    def _new_network(self, tx: _Tx, org: str, name: str) -> Network:
        check_name(name, "network")
        if tx.get(Network, "network", name):
            raise Conflict(f"network {name!r} already exists")
        network = Network(name=name, org=org, net_id=tx.next("network_id"))
        tx.put(network)
        return network

    @write_op
    def create_app(
        self, name: str, org: str, network: str | None = None, config: dict[str, Any] | None = None
    ) -> App:
        check_name(name, "app")
        doc = dict(config or {})
        parsed = appconfig.from_doc(doc)  # refuse a malformed config before anything is written
        if doc.get("primary_region"):
            self.regions.get(str(doc["primary_region"]))
        with self._write() as tx:
            owner = tx.need(Org, "org", org)
            if tx.get(App, "app", name):
                raise Conflict(f"app {name!r} already exists")
            net_name = network or owner.network
            existing = tx.get(Network, "network", net_name)
            if existing is None:
                existing = self._new_network(tx, org, net_name)
            elif existing.org != org:
                raise Conflict(f"network {net_name!r} belongs to org {existing.org!r}, not {org!r}")
            app = App(name=name, org=org, network=existing.name, config_doc=doc)
            _claim_existing_hostnames(tx)
            _claim_hostnames(tx, name, parsed.hostnames)
            tx.put(app)
        return app

    @write_op
    def set_app_config(self, name: str, config: dict[str, Any]) -> App:
        parsed = appconfig.from_doc(config)
        with self._write() as tx:
            app = tx.need(App, "app", name)
            updated = App(name=app.name, org=app.org, network=app.network, config_doc=dict(config))
            _claim_existing_hostnames(tx)
            held = _hostnames_of(app)
            for hostname in held - set(parsed.hostnames):
                tx.release_address(_hostname_key(hostname))
            _claim_hostnames(tx, name, [h for h in parsed.hostnames if h not in held])
            tx.put(updated)
        return updated

    @write_op
    def delete_app(self, name: str) -> None:
        with self._write() as tx:
            app = tx.need(App, "app", name)
            if any(m.app == name for m in tx.all(Machine, "machine")):
                raise Conflict(f"app {name!r} still has machines; scale it to 0 first")
            for hostname in _hostnames_of(app):
                tx.release_address(_hostname_key(hostname))
            tx.delete(app)

    # -- hosts ----------------------------------------------------------------------------------

    @write_op
    def register_host(
        self, name: str, region: str, role: HostRole, underlay: str, public_key: str = "", wg_port: int = 51820
    ) -> Host:
        check_name(name, "host")
        self.regions.get(region)
        if role not in HOST_ROLES:
            raise InvalidWrite(f"host role must be one of {', '.join(HOST_ROLES)}, not {role!r}")
        with self._write() as tx:
            if tx.get(Host, "host", name):
                raise Conflict(f"host {name!r} already exists")
            host = Host(name, region, role, tx.next("host_id"), underlay, public_key, wg_port)
            tx.claim_address(str(host.mesh_address), f"host/{name}")
            tx.put(host)
        return host

    @write_op
    def set_host_key(self, name: str, public_key: str) -> Host:
        with self._write() as tx:
            host = tx.need(Host, "host", name)
            updated = replace(host, public_key=public_key)
            tx.put(updated)
        return updated

    @write_op
    def observe_host(self, host: str, mesh_applied: int) -> Host:
        """Host-owned: `host`'s mesh agent has applied its peers up to catalog position `mesh_applied`. Only
        forward: an older position leaves the row as it is (and writes nothing)."""
        with self._write(owner=host) as tx:
            current = tx.need(Host, "host", host)
            if mesh_applied <= current.mesh_applied:
                return current
            updated = replace(current, mesh_applied=mesh_applied)
            tx.put(updated)
        return updated

    @write_op
    def delete_host(self, name: str) -> None:
        with self._write() as tx:
            host = tx.need(Host, "host", name)
            if any(m.host == name for m in tx.all(Machine, "machine")):
                raise Conflict(f"host {name!r} still has machines")
            if any(p.host == name for p in tx.all(Peer, "peer")):
                raise Conflict(f"host {name!r} still has WireGuard peers")
            tx.release_address(str(host.mesh_address))
            tx.delete(host)

    # -- machines -------------------------------------------------------------------------------

    @write_op
    def create_machine(
        self,
        app: str,
        host: str,
        machine_id: str | None = None,
        state: MachineState = "created",
        process_group: str = "app",
        metadata: dict[str, str] | None = None,
        skip_dns: bool = False,
        desired: Desired = "started",
    ) -> Machine:
        machine_id = machine_id or new_machine_id()
        if not MACHINE_ID.match(machine_id):
            raise InvalidWrite(f"machine id {machine_id!r} must be 14 lowercase hex digits")
        _check_state(state)
        check_name(process_group, "process group")
        with self._write() as tx:
            owner = tx.need(App, "app", app)
            where = tx.need(Host, "host", host)
            if where.role != "worker":
                raise InvalidWrite(f"host {host!r} is a {where.role}, machines run on workers")
            if tx.get(Machine, "machine", machine_id):
                raise Conflict(f"machine {machine_id} already exists")
            machine = Machine(
                id=machine_id, app=app, region=where.region, host=host,
                address=self._allocate(tx, owner.network, where, f"machine/{machine_id}"),
                state=state, process_group=process_group, metadata=dict(metadata or {}), skip_dns=skip_dns,
                desired=desired,
            )
            tx.put(machine)
        return machine

    def _allocate(self, tx: _Tx, network: str, host: Host, owner: str, peer: bool = False) -> str:
        net = tx.need(Network, "network", network)
        slot = tx.next(f"slot/{host.name}")
        make = addressing.peer_address if peer else addressing.machine_address
        address = str(make(net.net_id, host.host_id, slot))
        tx.claim_address(address, owner)
        return address

    @write_op
    def set_machine_state(self, machine_id: str, state: MachineState) -> Machine:
        _check_state(state)
        with self._write() as tx:
            machine = tx.need(Machine, "machine", machine_id)
            updated = _replace_machine(machine, state=state)
            tx.put(updated)
        return updated

    @write_op
    def set_machine_desired(self, machine_id: str, desired: Desired) -> Machine:
        """Global: what the machine should be doing; the agent of its host makes it so."""
        if desired not in DESIRED_STATES:
            raise InvalidWrite(f"desired state must be one of {', '.join(DESIRED_STATES)}, not {desired!r}")
        with self._write() as tx:
            machine = tx.need(Machine, "machine", machine_id)
            updated = _replace_machine(machine, desired=desired)
            tx.put(updated)
        return updated

    @write_op
    def observe_machine(self, machine_id: str, host: str, **observed: Any) -> Machine:
        """Host-owned: the agent of `host` reports what its machine is doing (`state`, `restarts`, `exit_code`,
        `health`). Refused for a machine placed on another host. The report gets a new `obs_gen` (above the
        last one and the current time in µs, so a replica rebuilt from scratch still orders it after)."""
        unknown = set(observed) - set(OBSERVED_FIELDS[:-1])
        if unknown:
            raise InvalidWrite(f"not observed fields of a machine: {', '.join(sorted(unknown))}")
        if "state" in observed:
            _check_state(observed["state"])
        if observed.get("health", "") not in HEALTH_STATES:
            raise InvalidWrite(f"health must be one of {HEALTH_STATES}, not {observed['health']!r}")
        with self._write(owner=host) as tx:
            machine = tx.need(Machine, "machine", machine_id)
            if machine.host != host:
                raise Conflict(f"machine {machine_id} runs on {machine.host}, not {host}: only its host reports it")
            gen = max(machine.obs_gen + 1, time.time_ns() // 1000)
            updated = _replace_machine(machine, obs_gen=gen, **observed)
            tx.put(updated)
        return updated

    @write_op
    def move_machine(self, machine_id: str, host: str) -> Machine:
        """Move to another worker: the machine keeps its id and gets an address on the new host."""
        with self._write() as tx:
            machine = tx.need(Machine, "machine", machine_id)
            where = tx.need(Host, "host", host)
            if where.role != "worker":
                raise InvalidWrite(f"host {host!r} is a {where.role}, machines run on workers")
            app = tx.need(App, "app", machine.app)
            tx.release_address(machine.address)
            address = self._allocate(tx, app.network, where, f"machine/{machine_id}")
            updated = _replace_machine(machine, host=host, region=where.region, address=address)
            tx.put(updated)
        return updated

    @write_op
    def set_machine_metadata(self, machine_id: str, metadata: dict[str, str]) -> Machine:
        with self._write() as tx:
            machine = tx.need(Machine, "machine", machine_id)
            updated = _replace_machine(machine, metadata=dict(metadata))
            tx.put(updated)
        return updated

    @write_op
    def delete_machine(self, machine_id: str) -> None:
        with self._write() as tx:
            machine = tx.need(Machine, "machine", machine_id)
            tx.release_address(machine.address)
            tx.delete(machine)

    # -- WireGuard peers ------------------------------------------------------------------------

    @write_op
    def create_peer(self, org: str, name: str, host: str, public_key: str, network: str | None = None) -> Peer:
        if not PEER_NAME.match(name):
            raise InvalidWrite(f"peer name {name!r} must be letters, digits and '-'")
        with self._write() as tx:
            owner = tx.need(Org, "org", org)
            where = tx.need(Host, "host", host)
            if where.role != "gateway":
                raise InvalidWrite(f"host {host!r} is a {where.role}, peers attach to gateways")
            net = tx.need(Network, "network", network or owner.network)
            if net.org != org:
                raise Conflict(f"network {net.name!r} belongs to org {net.org!r}, not {org!r}")
            if tx.get(Peer, "peer", name):
                raise Conflict(f"peer {name!r} already exists")
            address = self._allocate(tx, net.name, where, f"peer/{name}", peer=True)
            peer = Peer(name=name, org=org, network=net.name, host=host, address=address, public_key=public_key)
            tx.put(peer)
        return peer

    @write_op
    def set_peer_key(self, name: str, public_key: str) -> Peer:
        with self._write() as tx:
            peer = tx.need(Peer, "peer", name)
            updated = Peer(peer.name, peer.org, peer.network, peer.host, peer.address, public_key)
            tx.put(updated)
        return updated

    @write_op
    def delete_peer(self, name: str) -> Peer:
        with self._write() as tx:
            peer = tx.need(Peer, "peer", name)
            tx.release_address(peer.address)
            tx.delete(peer)
        return peer


def _check_state(state: str) -> None:
    if state not in MACHINE_STATES:
        raise InvalidWrite(f"machine state must be one of {', '.join(MACHINE_STATES)}, not {state!r}")


def _replace_machine(machine: Machine, **changes: Any) -> Machine:
    return replace(machine, **changes)


def _hostname_key(hostname: str) -> str:
    """The unique claim (in the `addresses` table) that makes a hostname belong to one app."""
    return f"hostname:{hostname}"


def _hostnames_of(app: App) -> set[str]:
    """The hostnames `app` holds claims for (its config was validated when it was written)."""
    try:
        return set(app.config.hostnames)
    except CatalogError:
        return set()


def _claim_existing_hostnames(tx: _Tx) -> None:
    """Once per catalog, inside the first app write that needs it: claims for the hostnames of apps written
    before hostnames were claimed, oldest write first (a hostname two such apps list stays with the first; the
    edge routes a name two apps list to neither until one of them drops it). Ordinary ops of the write, so a
    replicated catalog publishes them like any other."""
    if tx.db.execute("SELECT 1 FROM counters WHERE name='hostname_claims'").fetchone():
        return
    rows = tx.db.execute("SELECT data FROM records WHERE kind='app' ORDER BY version").fetchall()
    for (data,) in rows:
        app = decode("app", json.loads(data))
        assert isinstance(app, App)
        for hostname in sorted(_hostnames_of(app)):
            key = _hostname_key(hostname)
            if tx.db.execute("SELECT 1 FROM addresses WHERE address=?", (key,)).fetchone() is None:
                tx.claim_address(key, f"app/{app.name}")
    tx.set_counter("hostname_claims", 1)


def _claim_hostnames(tx: _Tx, app: str, hostnames: Iterable[str]) -> None:
    """Claim each hostname for `app`, in the write's transaction: a hostname held by another app refuses the
    whole write. The error does not name the holder (it may be another org's app)."""
    for hostname in hostnames:
        try:
            tx.claim_address(_hostname_key(hostname), f"app/{app}")
        except Conflict:
            raise Conflict(f"hostname {hostname!r} belongs to another app; an app can only claim a hostname "
                           "no other app holds") from None
