"""A stand-in for LiteFS, for tests and the lab: LiteFS (a FUSE file system in Go) cannot be built here.

It is not LiteFS. It keeps one SQLite database (rollback-journal mode) replicated primary -> replicas by
shipping whole snapshots, and writes the three control files in LiteFS's formats, which is all the proxy
reads:

- primary: the mount is a plain directory the app writes `<db>` into. The TXID is SQLite's own *file change
  counter* (header offset 24, RFC-like spec: sqlite.org/fileformat2.html §1.3.8), which every committing
  transaction increments in rollback-journal mode: a position derived from the file itself, so nothing can
  be missed. `<db>-pos` follows it (inotify on the mount, plus `sync()` which the in-process proxy calls
  before it reads the position for a write's cookie, as LiteFS's FUSE layer records commits synchronously);
  `.lag` is `+000000000`; there is no `.primary`.
- replica: long-polls the primary's `/snapshot?after=<txid>`; applies each snapshot with SQLite's backup API
  (readers of the replica's file stay consistent), then writes `<db>-pos` (so a reader waiting for its TXID
  finds its write), `.primary` (the primary's hostname, removed when the primary cannot be reached) and `.lag`
  (ms since the primary was last heard from; `+2147483647` before it ever was).

The primary's HTTP API (`addr`, LiteFS uses :20202): `GET /info` (JSON), `GET /snapshot?after=<16 hex>`
(long-poll: 200 + the database when newer, 204 after `wait` seconds, 1 s by default) and LiteFS's `GET /events`
(NDJSON: init, tx, primaryChange). A replica given an `addr` serves `/info` and `/events` too, so a proxy can
be woken by events exactly as against real LiteFS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
import zlib
from pathlib import Path

import aiohttp
from aiohttp import web

from litefs_proxy.config import Endpoint
from litefs_proxy.events import EventHub, primary_event, tx_event
from litefs_proxy.inotify import OVERFLOW, read_names, watch_directory
from litefs_proxy.mountfiles import (
    LAG_FILE,
    NO_PRIMARY_LAG_MS,
    PRIMARY_FILE,
    Pos,
    format_lag,
    format_pos,
    format_primary,
    pos_name,
    write_atomic,
)

log = logging.getLogger("litefs_proxy.replicator")

SQLITE_MAGIC = b"SQLite format 3\0"
CHANGE_COUNTER_OFFSET = 24
LONG_POLL = 1.0  # a replica hears from the primary at least this often: its .lag stays honest


def _header(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except FileNotFoundError:
        return None
    if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
        return None
    return header


def change_counter(path: Path) -> int | None:
    """The database file's change counter, or None when there is no (complete) database file."""
    header = _header(path)
    return None if header is None else int.from_bytes(header[CHANGE_COUNTER_OFFSET:CHANGE_COUNTER_OFFSET + 4], "big")


def is_wal(path: Path) -> bool:
    """WAL mode (header bytes 18-19 are 2): commits then leave the change counter alone until a checkpoint."""
    header = _header(path)
    return header is not None and header[18] == 2


def checksum(data: bytes) -> int:
    """A 64-bit checksum of a snapshot (the stand-in's, not LiteFS's CRC64 of the LTX pages)."""
    return (zlib.crc32(data) << 32) | zlib.adler32(data)


def snapshot(path: Path) -> tuple[int, bytes] | None:
    """(txid, a consistent copy of the database), via the backup API; retried if a commit slipped in."""
    for _ in range(20):
        before = change_counter(path)
        if before is None:
            return None
        src = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        mem = sqlite3.connect(":memory:")
        try:
            src.backup(mem)
            data = mem.serialize()
        finally:
            src.close()
            mem.close()
        if change_counter(path) == before:
            return before, data
    raise RuntimeError(f"{path}: database changing too fast to snapshot")


def apply_snapshot(path: Path, data: bytes) -> None:
    """Replace the replica's database content in place (readers see the old or the new, never a mix)."""
    mem = sqlite3.connect(":memory:")
    dst = sqlite3.connect(path, timeout=10.0)
    try:
        mem.deserialize(data)
        mem.backup(dst)
    finally:
        dst.close()
        mem.close()


async def serve_api(app: web.Application, addr: Endpoint) -> tuple[web.AppRunner, int]:
    """The stand-in's HTTP API (LiteFS's :20202): (runner, bound port)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, addr.host or None, addr.port, reuse_address=True)
    await site.start()
    return runner, int(runner.addresses[0][1])


class PrimaryReplicator:
    def __init__(self, mount: Path, db: str, hostname: str, addr: Endpoint | None) -> None:
        self.mount = mount
        self.db = db
        self.hostname = hostname
        self.addr = addr
        self.pos: Pos | None = None
        self.port = 0
        self._changed = asyncio.Event()
        self._fd: int | None = None
        self._runner: web.AppRunner | None = None
        self._tick: asyncio.Task[None] | None = None
        self.hub = EventHub(lambda: primary_event("init", True, self.hostname))
        self._warned = False

    @property
    def db_path(self) -> Path:
        return self.mount / self.db

    def sync(self) -> bool:
        """Publish the database's current position; True when it moved. Cheap: one 100-byte read."""
        txid = change_counter(self.db_path)
        if txid is None or (self.pos is not None and self.pos.txid == txid):
            return False
        if not self._warned and is_wal(self.db_path):
            self._warned = True
            log.warning("%s is in WAL mode: the stand-in sees commits only at checkpoints; use journal_mode=DELETE",
                        self.db_path)
        self.pos = Pos(txid, checksum(txid.to_bytes(8, "big") + self.hostname.encode()))
        write_atomic(self.mount / pos_name(self.db), format_pos(self.pos))
        self._changed.set()
        self.hub.publish(tx_event(self.db, self.pos.txid, self.pos.checksum))
        return True

    async def start(self) -> None:
        self.mount.mkdir(parents=True, exist_ok=True)
        (self.mount / PRIMARY_FILE).unlink(missing_ok=True)
        write_atomic(self.mount / LAG_FILE, format_lag(0))
        self.sync()
        loop = asyncio.get_running_loop()
        try:
            self._fd = watch_directory(str(self.mount))
            loop.add_reader(self._fd, self._on_readable)
        except OSError as exc:
            log.warning("inotify unavailable (%s): following %s by polling", exc, self.db_path)
        self._tick = loop.create_task(self._backstop())
        if self.addr is not None:
            app = web.Application()
            app.router.add_get("/info", self._info)
            app.router.add_get("/snapshot", self._snapshot)
            app.router.add_get("/events", self.hub.handle)
            self._runner, self.port = await serve_api(app, self.addr)
            log.info("replicator (primary %s) serving %s on port %d", self.hostname, self.db, self.port)

    async def close(self) -> None:
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
        if self._tick is not None:
            self._tick.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    def _on_readable(self) -> None:
        assert self._fd is not None
        names = read_names(self._fd)
        if OVERFLOW in names or self.db in names or f"{self.db}-journal" in names:
            self.sync()

    async def _backstop(self) -> None:
        while True:  # a missed or coalesced event costs at most this long
            await asyncio.sleep(0.2)
            self.sync()

    async def _info(self, request: web.Request) -> web.Response:
        txid = self.pos.txid if self.pos else 0
        return web.json_response({"hostname": self.hostname, "isPrimary": True, "db": self.db, "txid": f"{txid:016x}"})

    async def _snapshot(self, request: web.Request) -> web.Response:
        try:
            after = int(request.query.get("after", "0"), 16)
            wait = min(float(request.query.get("wait", LONG_POLL)), 60.0)
        except ValueError:
            return web.Response(status=400, text="after: 16 hex digits; wait: seconds\n")
        headers = {"Litefs-Hostname": self.hostname}
        deadline = time.monotonic() + wait
        while True:
            self.sync()
            if self.pos is not None and self.pos.txid > after:
                snap = await asyncio.to_thread(snapshot, self.db_path)
                if snap is not None:
                    txid, data = snap
                    headers |= {"Litefs-Txid": f"{txid:016x}", "Litefs-Checksum": f"{checksum(data):016x}"}
                    return web.Response(body=data, headers=headers, content_type="application/vnd.sqlite3")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return web.Response(status=204, headers=headers)
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)


class ReplicaReplicator:
    def __init__(self, mount: Path, db: str, primary_url: str, *, lag_interval: float = 0.5,
                 retry: float = 0.5, addr: Endpoint | None = None) -> None:
        self.mount = mount
        self.db = db
        self.primary_url = primary_url.rstrip("/")
        self.lag_interval = lag_interval
        self.retry = retry
        self.txid = 0
        self.primary: str | None = None
        self.last_contact: float | None = None
        self.applied = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self.addr = addr
        self.port = 0
        self._runner: web.AppRunner | None = None
        self.hub = EventHub(lambda: primary_event("init", False, self.primary or ""))

    async def start(self) -> None:
        self.mount.mkdir(parents=True, exist_ok=True)
        (self.mount / PRIMARY_FILE).unlink(missing_ok=True)
        (self.mount / pos_name(self.db)).unlink(missing_ok=True)
        write_atomic(self.mount / LAG_FILE, format_lag(NO_PRIMARY_LAG_MS))
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LONG_POLL + 10, connect=5))
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._pull()), loop.create_task(self._lag())]
        if self.addr is not None:
            app = web.Application()
            app.router.add_get("/events", self.hub.handle)
            app.router.add_get("/info", self._info)
            self._runner, self.port = await serve_api(app, self.addr)

    async def _info(self, request: web.Request) -> web.Response:
        return web.json_response({"hostname": self.primary or "", "isPrimary": False, "db": self.db,
                                  "txid": f"{self.txid:016x}"})

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _pull(self) -> None:
        assert self._session is not None
        while True:
            url = f"{self.primary_url}/snapshot?after={self.txid:016x}&wait={LONG_POLL:g}"
            try:
                async with self._session.get(url) as resp:
                    if resp.status not in (200, 204):
                        raise aiohttp.ClientError(f"primary answered {resp.status}")
                    data = await resp.read() if resp.status == 200 else b""
                    self._contact(resp.headers.get("Litefs-Hostname", ""))
                    if resp.status == 200:
                        txid = int(resp.headers["Litefs-Txid"], 16)
                        await asyncio.to_thread(apply_snapshot, self.mount / self.db, data)
                        self.txid = txid
                        self.applied += 1
                        pos = Pos(txid, int(resp.headers.get("Litefs-Checksum", "0"), 16))
                        write_atomic(self.mount / pos_name(self.db), format_pos(pos))
                        self.hub.publish(tx_event(self.db, pos.txid, pos.checksum))
            except (aiohttp.ClientError, TimeoutError, OSError, KeyError, ValueError, sqlite3.Error) as exc:
                if self.primary is not None:
                    log.warning("lost the primary %s: %s", self.primary, exc)
                    self.hub.publish(primary_event("primaryChange", False, ""))
                self.primary = None
                (self.mount / PRIMARY_FILE).unlink(missing_ok=True)
                await asyncio.sleep(self.retry)

    def _contact(self, hostname: str) -> None:
        self.last_contact = time.time()
        write_atomic(self.mount / LAG_FILE, format_lag(0))
        if hostname and hostname != self.primary:
            self.primary = hostname
            write_atomic(self.mount / PRIMARY_FILE, format_primary(hostname))
            self.hub.publish(primary_event("primaryChange", False, hostname))
            log.info("primary is %s", hostname)

    async def _lag(self) -> None:
        while True:
            await asyncio.sleep(self.lag_interval)
            if self.last_contact is None:
                continue
            lag_ms = int((time.time() - self.last_contact) * 1000)
            write_atomic(self.mount / LAG_FILE, format_lag(min(lag_ms, NO_PRIMARY_LAG_MS)))
