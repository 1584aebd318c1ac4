"""The replicated catalog: the `Catalog` API over a host's local replica, writing through NATS JetStream.

Reads come from the local replica (`catalog.db` in the host's state directory, the embedded catalog's
format), which the host's `sixpn catalog replicate` keeps current. Writes are of two kinds:

- **Global** (every write but a machine's observed state): bring the replica up to the stream's last
  sequence, run the very validation of the embedded catalog inside a SQLite transaction, roll it back, and
  publish the ops it recorded with `Nats-Expected-Last-Subject-Sequence` = the last global message this
  replica applied: if another writer published first, the whole write runs again on the newer state
  (`store.write_op`), so racing writers cannot both win. Then the replica catches up to the write's own
  sequence, so the caller reads what it wrote. With no quorum the write fails, and nothing is written.
- **Host-owned** (`observe_machine`, by the host's own agent): applied to the local replica at once (the
  host's services see it without the network) and queued in the `outbox`; the replicator publishes it on
  `sixpn.cat.host.<host>` when the cluster is reachable, where NATS permissions admit only that host.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from catalog.errors import CatalogError, WriteConflict
from catalog.fleetconfig import HostConfig
from catalog.models import Change, Host, Machine, Record
from catalog.regions import RegionTable
from catalog.replica import (
    GLOBAL_SUBJECT,
    Applier,
    Message,
    global_body,
    host_report_body,
    host_subject,
    meta,
    observed_body,
)
from catalog.state import State
from catalog.store import Catalog, _Tx

if TYPE_CHECKING:
    from catalog.natslink import SyncLink

MAX_FETCH_ROUNDS = 1000


def apply_messages(db: sqlite3.Connection, messages: list[Message]) -> tuple[int, int]:
    """Apply a batch in one transaction (writers of other processes queue on SQLite's lock)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = Applier(db).apply(messages)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result


class ReplicatedCatalog(Catalog):
    """A handle on a host's replica. `fresh_reads` (the default for an operator's seat, which runs no
    replicator) brings the replica up to the stream before the first read."""

    def __init__(self, config: HostConfig, regions: RegionTable | None = None,
                 fresh_reads: bool | None = None) -> None:
        super().__init__(config.state_dir, regions)
        self.config = config
        self._link: SyncLink | None = None
        self.fresh_reads = config.role == "operator" if fresh_reads is None else fresh_reads
        self._synced = False

    def __repr__(self) -> str:
        return f"ReplicatedCatalog({self.config.name}, seq={self.replica_seq()}, {self._link!r})"

    def close(self) -> None:
        if self._link is not None:
            self._link.close()
        super().close()

    @property
    def link(self) -> SyncLink:
        """The connection to the cluster, made on first use: a host's services that only read their replica and
        report locally (mesh agent, host agent) never load nats-py (a fifth of a second of every process start)."""
        if self._link is None:
            from catalog.natslink import SyncLink

            self._link = SyncLink(self.config.catalog, name=f"sixpn-{self.config.name}")
        return self._link

    # -- replication -----------------------------------------------------------------------------

    def replica_seq(self) -> int:
        return meta(self.db, "seq")

    def position(self) -> int:
        """The stream sequence this replica has applied (the operator's seat syncs first: its reads are fresh)."""
        if self.fresh_reads:
            self.sync()
        return self.replica_seq()

    def sync(self, upto: int | None = None) -> int:
        """Apply every stream message up to `upto` (default: the stream's last); returns the replica's seq."""
        target = self.link.last_seq() if upto is None else upto
        seq = self.replica_seq()
        for _ in range(MAX_FETCH_ROUNDS):
            if seq >= target:
                break
            apply_messages(self.db, self.link.fetch(seq, target))
            seq = self.replica_seq()
        self._synced = True
        return seq

    def init_stream(self, replicas: int) -> None:
        self.link.ensure_stream(replicas)

    def _fresh(self) -> None:
        if self.fresh_reads and not self._synced:
            self.sync()

    # -- reads -----------------------------------------------------------------------------------

    def snapshot(self) -> State:
        self._fresh()
        return super().snapshot()

    def changes_since(self, version: int, limit: int = 10_000) -> list[Change]:
        self._fresh()
        return super().changes_since(version, limit)

    def _read(self, cls: type[Any], kind: str, key: str) -> Any:
        self._fresh()
        return super()._read(cls, kind, key)

    # -- writes ----------------------------------------------------------------------------------

    @contextmanager
    def _write(self, owner: str | None = None) -> Iterator[_Tx]:
        if owner is not None:
            with self._write_local(owner) as tx:
                yield tx
            return
        if not self._synced:
            self.sync()  # once per handle; after that optimistic: a conflict syncs and runs the write again
        base = meta(self.db, "global_seq")
        self.db.execute("BEGIN IMMEDIATE")
        tx = _Tx(self.db)
        try:
            yield tx
        finally:
            self.db.execute("ROLLBACK")  # validated here; the stream decides, and the replica applies from it
        if not tx.ops:
            return
        body = global_body(tx.ops)
        try:
            seq = self.link.publish(GLOBAL_SUBJECT, body, expect_subject_seq=base, msg_id=uuid.uuid4().hex)
        except WriteConflict:
            self.sync()
            raise
        self.written = seq
        if seq == self.replica_seq() + 1:
            apply_messages(self.db, [Message(seq, GLOBAL_SUBJECT, body)])  # nothing between: no round trip
        else:
            self.sync(upto=seq)

    @contextmanager
    def _write_local(self, host: str) -> Iterator[_Tx]:
        if host != self.config.name:
            raise CatalogError(f"this is {self.config.name}'s replica: it cannot report for host {host}")
        self.db.execute("BEGIN IMMEDIATE")
        try:
            tx = _Tx(self.db)
            yield tx
            for op in tx.ops:
                if op[0] == "put" and op[1] == "machine":
                    self._queue(host, self._record(op))
                elif op[0] == "put" and op[1] == "host":
                    self._queue_host(self._host_record(op))
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    @staticmethod
    def _record(op: list[Any]) -> Machine:
        from catalog.models import decode

        record: Record = decode(op[1], op[2])
        assert isinstance(record, Machine)
        return record

    @staticmethod
    def _host_record(op: list[Any]) -> Host:
        from catalog.models import decode

        record: Record = decode(op[1], op[2])
        assert isinstance(record, Host)
        return record

    def _queue_host(self, host: Host) -> None:
        self.db.execute("INSERT INTO outbox (subject, msg_id, body) VALUES (?, ?, ?)",
                        (host_subject(host.name), f"mesh-{host.name}-{host.mesh_applied}",
                         host_report_body(host).decode()))

    def _queue(self, host: str, machine: Machine) -> None:
        self.db.execute("INSERT INTO outbox (subject, msg_id, body) VALUES (?, ?, ?)",
                        (host_subject(host), f"obs-{machine.id}-{machine.obs_gen}", observed_body(machine).decode()))
