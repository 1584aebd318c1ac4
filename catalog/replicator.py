"""`sixpn catalog replicate`: keeps one host's replica current from the stream and publishes its outbox.

- **In:** an ordered push consumer from `meta.seq + 1`. Messages are buffered as they arrive and applied in
  one SQLite transaction per event-loop turn (a burst costs one commit, not one per message); the host's
  services see them through the `changes` log as on an embedded catalog.
- **Out:** the host agent's reports (`outbox`, written locally first) are published on the host's subject
  with `Nats-Msg-Id` (a retry after a lost ack is deduplicated) and removed once acknowledged.
- **Cut off:** with no quorum nothing arrives and publishes fail; the replica keeps its last state, the
  outbox keeps growing, and both resume when the cluster is back (the consumer restarts from `meta.seq`).
- **Lost or corrupt replica:** a file that SQLite cannot open or `quick_check` rejects is moved aside and
  rebuilt from the stream's first message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import nats.errors
from nats.aio.msg import Msg
from nats.js import api
from nats.js.client import JetStreamContext

from catalog.errors import CatalogError
from catalog.fleetconfig import HostConfig
from catalog.natslink import AsyncLink
from catalog.replica import SUBJECTS, Message, replica_seq
from catalog.replicated import apply_messages
from catalog.store import DB_FILE, Catalog

log = logging.getLogger("sixpn.catalog.replicator")

OUTBOX_INTERVAL = 0.02
BATCH_HOLD = 0.002
STALL_CHECK = 1.0  # seconds between checks that the consumer still advances toward the stream's end
RETRY = 0.5


@dataclass
class Stats:
    applied: int = 0
    skipped: int = 0
    batches: int = 0
    published: int = 0
    apply_cpu: float = 0.0  # seconds of process CPU spent applying
    started: float = field(default_factory=time.monotonic)


def open_replica(state_dir: Path) -> Catalog:
    """The host's replica, rebuilt empty when it is corrupt (the stream holds everything it held)."""
    path = state_dir / DB_FILE
    try:
        catalog = Catalog(state_dir)
        ok = catalog.db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        if ok:
            return catalog
        catalog.close()
    except (CatalogError, sqlite3.DatabaseError):
        pass
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for suffix in ("", "-wal", "-shm"):
        victim = path.with_name(path.name + suffix)
        if victim.exists():
            victim.replace(victim.with_name(f"{victim.name}.corrupt-{stamp}"))
    log.warning("replica %s was corrupt: moved aside, rebuilding from the stream", path)
    return Catalog(state_dir)


class Replicator:
    def __init__(self, config: HostConfig) -> None:
        self.config = config
        self.catalog = open_replica(config.state_dir)
        self.db = self.catalog.db
        self.link = AsyncLink(config.catalog, name=f"replica-{config.name}", reconnect=True)
        self.stats = Stats()
        self._pending: list[Message] = []
        self._flush_scheduled = False
        self._progress = asyncio.Event()

    def __repr__(self) -> str:
        return (f"Replicator({self.config.name}, seq={replica_seq(self.db)}, applied={self.stats.applied}, "
                f"outbox={self.outbox_size()})")

    def outbox_size(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    async def run(self) -> None:
        await self._connect()
        log.info("replica %s at seq %d, following %s", self.config.name, replica_seq(self.db),
                 self.config.catalog.stream)
        await asyncio.gather(self._consume(), self._publish_outbox())

    async def close(self) -> None:
        await self.link.close()
        self.catalog.close()

    async def _connect(self) -> None:
        delay = RETRY
        while True:
            try:
                await self.link.connect()
                return
            except CatalogError as exc:
                log.warning("%s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- in ----------------------------------------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            start = replica_seq(self.db) + 1
            try:
                sub = await self._subscribe(start)
            except (TimeoutError, nats.errors.Error, CatalogError) as exc:
                log.debug("cannot subscribe from %d: %s", start, exc)
                await asyncio.sleep(RETRY)
                continue
            try:
                await self._watch_progress()
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _subscribe(self, start: int) -> JetStreamContext.PushSubscription:
        js = await self.link.connect()
        config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
        return await js.subscribe(SUBJECTS, stream=self.config.catalog.stream, ordered_consumer=True,
                                  config=config, cb=self._on_message, idle_heartbeat=1.0)

    async def _watch_progress(self) -> None:
        """Return (to resubscribe) when the replica is behind the stream and has not advanced for a while:
        a consumer lost across a partition or a server restart is recreated from `meta.seq`."""
        stalled_since: float | None = None
        while True:
            await asyncio.sleep(STALL_CHECK)
            try:
                last = await self.link.last_seq()
            except CatalogError:
                continue  # cut off: keep serving what we have
            seq = replica_seq(self.db)
            if seq >= last:
                stalled_since = None
                continue
            now = time.monotonic()
            if stalled_since is None or self._progress.is_set():
                stalled_since = now
                self._progress.clear()
            elif now - stalled_since > 2 * STALL_CHECK:
                log.info("replica at %d behind the stream's %d without progress: resubscribing", seq, last)
                return

    async def _on_message(self, msg: Msg) -> None:
        self._pending.append(Message(msg.metadata.sequence.stream, msg.subject, msg.data))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            # A short hold gathers a burst into one transaction: one commit and one wake-up of every follower
            # on the host instead of one per message, for at most BATCH_HOLD of added latency.
            asyncio.get_running_loop().call_later(BATCH_HOLD, self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending, []
        if not batch:
            return
        cpu = time.process_time()
        applied, skipped = apply_messages(self.db, batch)
        self.stats.apply_cpu += time.process_time() - cpu
        self.stats.applied += applied
        self.stats.skipped += skipped
        self.stats.batches += 1
        self._progress.set()

    # -- out ---------------------------------------------------------------------------------------

    async def _publish_outbox(self) -> None:
        while True:
            rows = self.db.execute("SELECT id, subject, msg_id, body FROM outbox ORDER BY id LIMIT 100").fetchall()
            if not rows:
                await asyncio.sleep(OUTBOX_INTERVAL)
                continue
            for row_id, subject, msg_id, body in rows:
                try:
                    await self.link.publish(subject, body.encode(), msg_id=msg_id)
                except CatalogError as exc:
                    log.debug("outbox: %s", exc)
                    await asyncio.sleep(RETRY)
                    break
                self.db.execute("DELETE FROM outbox WHERE id=?", (row_id,))
                self.stats.published += 1

