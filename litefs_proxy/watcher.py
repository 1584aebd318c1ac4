"""One watcher per mount, shared by every waiting request: readers waiting for a TXID, writers waiting for
a primary. Waiting costs nothing: each waiter is a future in a heap; inotify on the mount directory wakes the
watcher, which re-reads `<db>-pos` once and resolves every future whose TXID has been reached.

A FUSE mount (LiteFS's) sends no inotify events for changes its server makes itself: there, and where inotify
is unavailable, LiteFS's `/events` stream (the server calls `poke()`, `set_events_live()`) or else a poll
(`poll_interval`, only while someone waits; one file read per tick however many wait) wakes the waiters. On a
local file system with inotify nothing polls: waiting costs no CPU. `poll_interval = 0` never polls.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import re
from pathlib import Path

from litefs_proxy.errors import MountError
from litefs_proxy.inotify import OVERFLOW, read_names, watch_directory
from litefs_proxy.mountfiles import LAG_FILE, PRIMARY_FILE, Pos, Role, pos_name, read_pos, read_role

log = logging.getLogger(__name__)


class MountWatcher:
    def __init__(self, mount: Path, db: str, *, poll_interval: float = 0.1, inotify: bool = True) -> None:
        self.mount = mount
        self.db = db
        self.poll_interval = poll_interval
        self.use_inotify = inotify
        self._pos_name = pos_name(db)
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pos_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._role_waiters: list[asyncio.Future[None]] = []
        self._seq = itertools.count()
        self._poller: asyncio.Task[None] | None = None
        self.fuse = False  # inotify watches, but a FUSE server's own changes never show up in it
        self.events_live = False
        self.wakeups = 0  # how often the watcher re-read the position (for tests and the bench)

    @property
    def notifying(self) -> bool:
        return self._fd is not None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if not self.use_inotify:
            return
        try:
            self._fd = watch_directory(str(self.mount))
        except OSError as exc:
            log.warning("inotify unavailable on %s (%s); waiting by polling every %.3fs",
                        self.mount, exc, self.poll_interval)
            return
        self._loop.add_reader(self._fd, self._on_readable)
        self.fuse = filesystem_type(self.mount).startswith("fuse")
        if self.fuse:
            log.info("%s is a FUSE mount: inotify cannot see LiteFS's changes; waking waiters by /events "
                     "(litefs-url) or by polling every %.3fs", self.mount, self.poll_interval)

    @property
    def notify_reliable(self) -> bool:
        """Every change to the mount files reaches us without polling."""
        return (self._fd is not None and not self.fuse) or self.events_live

    def set_events_live(self, live: bool) -> None:
        self.events_live = live
        if not live and self.waiting:
            self._ensure_poller()

    def close(self) -> None:
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        for _, _, fut in self._pos_waiters:
            fut.cancel()
        for fut in self._role_waiters:
            fut.cancel()
        self._pos_waiters.clear()
        self._role_waiters.clear()

    # -- reads ---------------------------------------------------------------------------------------------

    def pos(self) -> Pos | None:
        try:
            return read_pos(self.mount, self.db)
        except MountError as exc:
            log.warning("%s", exc)
            return None

    def role(self) -> tuple[Role, str | None]:
        try:
            return read_role(self.mount)
        except MountError as exc:
            log.warning("%s", exc)
            return "unknown", None

    @property
    def waiting(self) -> int:
        return len(self._pos_waiters) + len(self._role_waiters)

    # -- waits ---------------------------------------------------------------------------------------------

    async def wait_pos(self, txid: int, timeout: float) -> bool:
        """True once the local position reaches `txid`; False after `timeout` seconds."""
        pos = self.pos()
        if pos is None or pos.txid >= txid:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (txid, next(self._seq), fut)
        heapq.heappush(self._pos_waiters, entry)
        self._ensure_poller()
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            if not fut.done() or fut.cancelled():
                self._drop(entry)

    async def wait_role(self, timeout: float) -> tuple[Role, str | None]:
        """The role as soon as it is known (primary or replica with a primary), or "unknown" after `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            role, primary = self.role()
            remaining = deadline - loop.time()
            if role != "unknown" or remaining <= 0:
                return role, primary
            fut: asyncio.Future[None] = loop.create_future()
            self._role_waiters.append(fut)
            self._ensure_poller()
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                pass
            finally:
                if fut in self._role_waiters:
                    self._role_waiters.remove(fut)

    # -- wake-ups ------------------------------------------------------------------------------------------

    def poke(self) -> None:
        """Something says the mount changed (LiteFS's /events): re-read it for whoever waits."""
        self._release_pos()
        self._release_roles()

    def _on_readable(self) -> None:
        assert self._fd is not None
        names = read_names(self._fd)
        if OVERFLOW in names or self._pos_name in names:
            self._release_pos()
        if OVERFLOW in names or PRIMARY_FILE in names or LAG_FILE in names:
            self._release_roles()

    def _release_pos(self) -> None:
        if not self._pos_waiters:
            return
        self.wakeups += 1
        pos = self.pos()
        reached = 2**64 if pos is None else pos.txid  # the database went away: stop waiting, as LiteFS would
        while self._pos_waiters and self._pos_waiters[0][0] <= reached:
            _, _, fut = heapq.heappop(self._pos_waiters)
            if not fut.done():
                fut.set_result(None)

    def _release_roles(self) -> None:
        waiters, self._role_waiters = self._role_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _drop(self, entry: tuple[int, int, asyncio.Future[None]]) -> None:
        try:
            self._pos_waiters.remove(entry)
        except ValueError:
            return
        heapq.heapify(self._pos_waiters)

    def _ensure_poller(self) -> None:
        if self.poll_interval <= 0 or self.notify_reliable:
            return
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll(max(self.poll_interval, 0.001)))

    async def _poll(self, interval: float) -> None:
        while (self._pos_waiters or self._role_waiters) and not self.notify_reliable:
            await asyncio.sleep(interval)
            self._release_pos()
            self._release_roles()


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal (proc(5)).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def filesystem_type(path: Path, mountinfo: str | None = None) -> str:
    """The type of the file system holding `path`, from /proc/self/mountinfo ("" when unknown)."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return ""
    target = os.path.realpath(path)
    best, kind = "", ""
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        point = _unescape(fields[4])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, right.split()[0]
    return kind
