"""A host's replica of the replicated catalog: the embedded catalog's SQLite file, written from the stream.

The JetStream stream `SIXPN_CATALOG` is the ordered log; its sequence is the global version. Two kinds of
message (JSON bodies, `"v": 1`):

- `sixpn.cat.global`: one global write, the ops its writer's transaction recorded, in order
  (`["put"|"delete", kind, row]`, `["counter", name, value]`, `["claim", key, owner]`, `["release", key]`).
  The writer validated it against the replica at the previous global message and published it with
  `Nats-Expected-Last-Subject-Sequence`, so two racing writers cannot both win.
- `sixpn.cat.host.<host>`: one observed report of a machine on `<host>`
  (`{"machine": id, "observed": {state, restarts, exit_code, health, obs_gen}}`), written only by that
  host's credentials; applied only to a machine on that host, and only if its `obs_gen` is newer. Or the
  host's own report (`{"host": {"mesh_applied": position}}`), applied only if it moves forward.

Applying is deterministic (the same messages in the same order give the same rows on every replica), so a
replica at stream sequence S holds what every other replica holds at S — except for its own host's reports
that are not in the stream yet: those are applied locally at once (local first) and queued in `outbox`, and
the stream copy later changes nothing here because its `obs_gen` is not newer. Services follow the local
`changes` log exactly as on an embedded catalog; `meta.seq` is the stream sequence applied.

A message that does not decode, or names rows that do not fit, is logged and skipped (its sequence is
still consumed, so every replica skips the same ones).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from catalog.models import (
    KINDS,
    OBSERVED_FIELDS,
    Host,
    Machine,
    Record,
    decode,
    encode,
    key_of,
    kind_of,
    merge_host_observed,
    merge_observed,
)

log = logging.getLogger("sixpn.catalog.replica")

GLOBAL_SUBJECT = "sixpn.cat.global"
HOST_PREFIX = "sixpn.cat.host."
SUBJECTS = "sixpn.cat.>"
FORMAT = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, subject TEXT NOT NULL,
  msg_id TEXT NOT NULL, body TEXT NOT NULL);
"""


class BadMessage(ValueError):
    """A message on the stream that this replica cannot apply (malformed, foreign, or not fitting)."""


@dataclass(frozen=True)
class Message:
    seq: int  # the stream sequence: the global version
    subject: str
    data: bytes

    def __repr__(self) -> str:
        return f"Message(seq={self.seq}, subject={self.subject!r}, {len(self.data)} bytes)"


def host_subject(host: str) -> str:
    return HOST_PREFIX + host


def global_body(ops: list[list[Any]]) -> bytes:
    return json.dumps({"v": FORMAT, "ops": ops}, separators=(",", ":")).encode()


def observed_body(machine: Machine) -> bytes:
    observed = {name: getattr(machine, name) for name in OBSERVED_FIELDS}
    return json.dumps({"v": FORMAT, "machine": machine.id, "observed": observed}, separators=(",", ":")).encode()


def host_report_body(host: Host) -> bytes:
    return json.dumps({"v": FORMAT, "host": {"mesh_applied": host.mesh_applied}}, separators=(",", ":")).encode()


def meta(db: sqlite3.Connection, key: str) -> int:
    row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return 0 if row is None else int(row[0])


def set_meta(db: sqlite3.Connection, key: str, value: int) -> None:
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


class Applier:
    """Applies stream messages to a replica's SQLite connection inside the caller's transaction.

    `put`/`delete` write `records` and append to the local `changes` log (the followers' cursor), exactly as
    the embedded catalog's own writes do."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def apply(self, messages: Iterable[Message]) -> tuple[int, int]:
        """Apply messages in order; returns (applied, skipped). Messages at or below `meta.seq` are already
        applied and ignored; a gap (a sequence missing) stops the batch, the caller fetches again."""
        applied = skipped = 0
        seq = start = meta(self.db, "seq")
        global_seq = None
        for message in messages:
            if message.seq <= seq:
                continue
            if message.seq != seq + 1:
                break
            try:
                self._apply_one(message)
                applied += 1
            except BadMessage as exc:
                log.warning("skipped stream message %d on %s: %s", message.seq, message.subject, exc)
                skipped += 1
            seq = message.seq
            if message.subject == GLOBAL_SUBJECT:  # skipped or not: the next global write expects it last
                global_seq = seq
        if seq != start:  # once per batch, in the caller's transaction with the rows
            set_meta(self.db, "seq", seq)
        if global_seq is not None:
            set_meta(self.db, "global_seq", global_seq)
        return applied, skipped

    def _apply_one(self, message: Message) -> None:
        try:
            body = json.loads(message.data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadMessage(f"not JSON: {exc}") from None
        if not isinstance(body, dict) or body.get("v") != FORMAT:
            raise BadMessage("not a sixpn catalog message of format 1")
        if message.subject == GLOBAL_SUBJECT:
            self._global(body)
        elif message.subject.startswith(HOST_PREFIX):
            self._observed(message.subject[len(HOST_PREFIX):], body)
        else:
            raise BadMessage("foreign subject")

    def _global(self, body: dict[str, Any]) -> None:
        ops = body.get("ops")
        if not isinstance(ops, list) or not all(isinstance(op, list) and op for op in ops):
            raise BadMessage("ops must be a list of lists")
        decoded = [self._decode_op(op) for op in ops]  # all or nothing: decode every op before writing any
        for op in decoded:
            self._write_op(op)

    def _decode_op(self, op: list[Any]) -> list[Any]:
        match op:
            case ["put" | "delete" as verb, str(kind), dict(data)] if kind in KINDS:
                try:
                    return [verb, decode(kind, data)]
                except (TypeError, ValueError) as exc:
                    raise BadMessage(f"bad {kind} row: {exc}") from None
            case ["counter", str(), int()] | ["claim", str(), str()] | ["release", str()]:
                return op
        raise BadMessage(f"unknown op {str(op)[:80]}")

    def _write_op(self, op: list[Any]) -> None:
        verb = op[0]
        if verb == "put":
            record = op[1]
            if isinstance(record, Machine):
                current = self._machine(record.id)
                if current is not None:
                    record = merge_observed(current, record)
            elif isinstance(record, Host):
                current_host = self._host(record.name)
                if current_host is not None:
                    record = merge_host_observed(current_host, record)
            self._put(record)
        elif verb == "delete":
            self._delete(op[1])
        elif verb == "counter":
            self.db.execute("INSERT OR REPLACE INTO counters (name, value) VALUES (?, ?)", (op[1], op[2]))
        elif verb == "claim":
            self.db.execute("INSERT OR REPLACE INTO addresses (address, owner) VALUES (?, ?)", (op[1], op[2]))
        else:
            self.db.execute("DELETE FROM addresses WHERE address=?", (op[1],))

    def _observed(self, host: str, body: dict[str, Any]) -> None:
        if "host" in body:
            self._host_report(host, body["host"])
            return
        machine_id, observed = body.get("machine"), body.get("observed")
        if not isinstance(machine_id, str) or not isinstance(observed, dict) or set(observed) != set(OBSERVED_FIELDS):
            raise BadMessage("an observed report needs machine and every observed field")
        current = self._machine(machine_id)
        if current is None or current.host != host:
            return  # deleted or moved since: the report is stale, not malformed
        try:
            incoming = replace(current, **observed)
        except TypeError as exc:
            raise BadMessage(str(exc)) from None
        if not isinstance(incoming.obs_gen, int) or incoming.obs_gen <= current.obs_gen:
            return  # this replica holds the same or a newer report (its own host's, applied locally first)
        self._put(incoming)

    def _host_report(self, host: str, report: Any) -> None:
        position = report.get("mesh_applied") if isinstance(report, dict) else None
        if not isinstance(position, int) or isinstance(position, bool) or set(report) != {"mesh_applied"}:
            raise BadMessage("a host report needs mesh_applied, an integer, and nothing else")
        current = self._host(host)
        if current is None or position <= current.mesh_applied:
            return  # deleted since, or this replica holds the same or a newer report
        self._put(replace(current, mesh_applied=position))

    # -- rows ------------------------------------------------------------------------------------

    def _host(self, name: str) -> Host | None:
        row = self.db.execute("SELECT data FROM records WHERE kind='host' AND key=?", (name,)).fetchone()
        if row is None:
            return None
        record = decode("host", json.loads(row[0]))
        assert isinstance(record, Host)
        return record

    def _machine(self, machine_id: str) -> Machine | None:
        row = self.db.execute("SELECT data FROM records WHERE kind='machine' AND key=?", (machine_id,)).fetchone()
        if row is None:
            return None
        record = decode("machine", json.loads(row[0]))
        assert isinstance(record, Machine)
        return record

    def _put(self, record: Record) -> None:
        data = json.dumps(encode(record))
        kind, key = kind_of(record), key_of(record)
        cur = self.db.execute("INSERT INTO changes (kind, key, op, data) VALUES (?, ?, 'put', ?)", (kind, key, data))
        self.db.execute("INSERT OR REPLACE INTO records (kind, key, data, version) VALUES (?, ?, ?, ?)",
                        (kind, key, data, cur.lastrowid))

    def _delete(self, record: Record) -> None:
        kind, key = kind_of(record), key_of(record)
        row = self.db.execute("SELECT data FROM records WHERE kind=? AND key=?", (kind, key)).fetchone()
        if row is None:
            return
        self.db.execute("INSERT INTO changes (kind, key, op, data) VALUES (?, ?, 'delete', ?)", (kind, key, row[0]))
        self.db.execute("DELETE FROM records WHERE kind=? AND key=?", (kind, key))


def replica_seq(db: sqlite3.Connection) -> int:
    """The stream sequence a replica has applied (0 for an embedded catalog or a new replica)."""
    return meta(db, "seq")
