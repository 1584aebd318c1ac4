"""A tiny app that keeps notes in a SQLite database inside the mount: what the lab and the tests put behind
the proxy (the lab's sample app has no database).

    POST /notes        body = the note; 201, `{"id": N}`       (a write: on a replica the proxy replays it)
    GET  /notes/<id>   the note, or 404                         (a read: waits for the client's __txid)
    GET  /notes        `{"count": N, ...identity}`
    GET  /healthz      ok
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

from edge_proxy.http1 import Exchange, ServerConnection, ServerLimits

_ID = [(b"x-region", os.environ.get("FLY_REGION", "").encode()),
       (b"x-machine-id", os.environ.get("FLY_MACHINE_ID", "").encode())]  # which machine answered
JSON = [(b"content-type", b"application/json"), *_ID]
TEXT = [(b"content-type", b"text/plain"), *_ID]


def identity() -> dict[str, str]:
    return {"region": os.environ.get("FLY_REGION", ""), "machine_id": os.environ.get("FLY_MACHINE_ID", "")}


class NotesApp:
    def __init__(self, db: Path) -> None:
        self.db = db

    def _connect(self, write: bool) -> sqlite3.Connection:
        if write:
            conn = sqlite3.connect(self.db, timeout=10.0)
            conn.execute("PRAGMA journal_mode=DELETE")  # the stand-in's TXID is the rollback-mode change counter
            conn.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
            return conn
        return sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10.0)

    async def handle(self, ex: Exchange) -> None:
        method, path = ex.head.method, ex.head.target.split(b"?", 1)[0].decode()
        if path == "/healthz":
            ex.respond(200, TEXT, b"ok\n")
        elif path == "/notes" and method == b"POST":
            body = b""
            while data := await ex.body.read():
                body += data
            with self._connect(write=True) as conn:
                cur = conn.execute("INSERT INTO notes (body) VALUES (?)", (body,))
                note_id = cur.lastrowid
            conn.close()
            ex.respond(201, JSON, json.dumps({"id": note_id, "size": len(body), **identity()}).encode())
        elif path.startswith("/notes/") and method in (b"GET", b"HEAD"):
            row = self._read("SELECT body FROM notes WHERE id = ?", (path.rsplit("/", 1)[1],))
            if row is None:
                ex.respond(404, TEXT, b"no such note\n")
            else:
                ex.respond(200, [(b"content-type", b"application/octet-stream"), *_ID], bytes(row[0]))
        elif path in ("/", "/notes") and method in (b"GET", b"HEAD"):
            row = self._read("SELECT count(*) FROM notes", ())
            ex.respond(200, JSON, json.dumps({"count": row[0] if row else 0, **identity()}).encode())
        else:
            ex.respond(404, TEXT, b"not found\n")

    def _read(self, sql: str, args: tuple[object, ...]) -> tuple[Any, ...] | None:
        try:
            conn = self._connect(write=False)
        except sqlite3.OperationalError:
            return None  # no database yet
        try:
            result: tuple[Any, ...] | None = conn.execute(sql, args).fetchone()
            return result
        except sqlite3.OperationalError:
            return None  # no table yet
        finally:
            conn.close()


async def serve(db: Path, host: str, port: int, stop: asyncio.Event | None = None) -> None:
    app = NotesApp(db)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ServerConnection(app.handle, ServerLimits()), host or None, port,
                                      reuse_address=True)
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="litefs_proxy.demoapp", description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True, help="the database file (inside the mount)")
    parser.add_argument("--host", default="")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.db, args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
