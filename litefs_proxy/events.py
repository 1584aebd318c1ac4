"""LiteFS's `/events` stream: newline-delimited JSON, one event a line (litefs client.go's EventSubscription).

    {"type":"init","data":{"isPrimary":true,"hostname":"node-1"}}
    {"type":"tx","db":"db","data":{"txID":"0000000000000027","postApplyChecksum":"83b05248774ce767",...}}
    {"type":"primaryChange","data":{"isPrimary":false,"hostname":"node-2"}}

A FUSE mount sends no inotify events for changes LiteFS makes itself, so against real LiteFS this stream is
what wakes waiting readers without polling. The proxy uses events only as wake-ups and re-reads the mount
files, which stay the single source of truth. The mount stand-in serves the same stream (`EventHub`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

log = logging.getLogger("litefs_proxy.events")


@dataclass(frozen=True)
class Event:
    type: str  # init | tx | primaryChange | (anything newer: ignored but still a wake-up)
    db: str = ""
    txid: int = 0
    is_primary: bool | None = None
    hostname: str = ""


def parse_event(line: bytes) -> Event | None:
    """One line of the stream; None for blank or malformed lines (a bad line must not end the stream)."""
    line = line.strip()
    if not line:
        return None
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("type"), str):
        return None
    raw_data = doc.get("data")
    data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
    db = doc.get("db")
    txid = 0
    raw = data.get("txID")
    if isinstance(raw, str) and len(raw) == 16:
        with contextlib.suppress(ValueError):
            txid = int(raw, 16)
    is_primary = data.get("isPrimary")
    hostname = data.get("hostname")
    return Event(type=doc["type"], db=db if isinstance(db, str) else "", txid=txid,
                 is_primary=is_primary if isinstance(is_primary, bool) else None,
                 hostname=hostname if isinstance(hostname, str) else "")


def format_event(kind: str, data: dict[str, Any], db: str = "") -> bytes:
    doc: dict[str, Any] = {"type": kind}
    if db:
        doc["db"] = db
    doc["data"] = data
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def tx_event(db: str, txid: int, checksum: int) -> bytes:
    return format_event("tx", {"txID": f"{txid:016x}", "postApplyChecksum": f"{checksum:016x}"}, db)


def primary_event(kind: str, is_primary: bool, hostname: str) -> bytes:
    return format_event(kind, {"isPrimary": is_primary, "hostname": hostname})


class EventHub:
    """The serving side (mount stand-in): `GET /events` streams `init` then every published line."""

    def __init__(self, init: Callable[[], bytes]) -> None:
        self._init = init
        self._subscribers: set[asyncio.Queue[bytes]] = set()

    def publish(self, line: bytes) -> None:
        for queue in self._subscribers:
            if queue.qsize() < 1000:  # a subscriber that stopped reading loses lines, never our memory
                queue.put_nowait(line)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._subscribers.add(queue)
        try:
            await resp.write(self._init())
            while True:
                await resp.write(await queue.get())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._subscribers.discard(queue)
        return resp


class EventsClient:
    """Follows `<url>/events`, calling `on_event` per event (and with None on every (re)connect, when
    whatever happened in between is unknown); reconnects after `retry` seconds."""

    def __init__(self, url: str, on_event: Callable[[Event | None], None], retry: float = 0.5) -> None:
        self.url = url.rstrip("/") + "/events"
        self.on_event = on_event
        self.retry = retry
        self.connected = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, connect=5, sock_read=None)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    async with session.get(self.url) as resp:
                        if resp.status != 200:
                            raise aiohttp.ClientError(f"{self.url}: status {resp.status}")
                        self.connected = True
                        self.on_event(None)
                        async for line in resp.content:
                            event = parse_event(line)
                            if event is not None:
                                self.on_event(event)
                except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:  # ValueError: line too long
                    log.debug("events stream %s: %s", self.url, exc)
                self.connected = False
                self.on_event(None)
                await asyncio.sleep(self.retry)
