"""The mount stand-in over loopback: a primary and a replica replicator, the demo app, two proxies."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

from litefs_proxy.config import Endpoint
from litefs_proxy.demoapp import NotesApp
from litefs_proxy.mountfiles import NO_PRIMARY_LAG_MS, read_lag, read_pos, read_primary, read_role
from litefs_proxy.replicator import PrimaryReplicator, ReplicaReplicator, change_counter, snapshot
from tests.litefs_proxy.helpers import make_cfg, proxy, request, upstream


def test_change_counter_counts_commits(tmp_path: Path) -> None:
    db = tmp_path / "db"
    assert change_counter(db) is None
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    first = change_counter(db)
    assert first is not None
    for i in range(3):
        conn.execute("INSERT INTO t VALUES (?)", (i,))
        conn.commit()
    conn.close()
    assert change_counter(db) == first + 3
    snap = snapshot(db)
    assert snap is not None and snap[0] == first + 3 and snap[1].startswith(b"SQLite format 3\0")
    (tmp_path / "junk").write_bytes(b"not a database")
    assert change_counter(tmp_path / "junk") is None


def test_replica_follows_primary_and_a_client_reads_its_own_write(tmp_path: Path) -> None:
    async def main() -> None:
        pm, rm = tmp_path / "primary", tmp_path / "replica"
        primary = PrimaryReplicator(pm, "db", "m-gru", Endpoint("127.0.0.1", 0))
        await primary.start()
        replica = ReplicaReplicator(rm, "db", f"http://127.0.0.1:{primary.port}", lag_interval=0.05)
        assert read_lag(pm) == 0 and read_primary(pm) is None and read_role(pm)[0] == "primary"
        await replica.start()
        try:
            assert read_lag(rm) == NO_PRIMARY_LAG_MS and read_role(rm)[0] == "unknown"
            async with upstream(NotesApp(pm / "db").handle) as app_p, upstream(NotesApp(rm / "db").handle) as app_r, \
                    proxy(make_cfg(app_p.port, poll_interval=0.0), pm, before_cookie=primary.sync) as pp, \
                    proxy(make_cfg(app_r.port, poll_interval=0.0), rm) as rp:
                for _ in range(200):  # the replica has heard from the primary
                    if read_primary(rm) == "m-gru":
                        break
                    await asyncio.sleep(0.02)
                assert read_role(rm) == ("replica", "m-gru")
                # The database exists everywhere first (LiteFS forwards reads at once while it does not).
                assert (await request(pp.port, "POST", "/notes", body=b"migration")).status == 201
                for _ in range(200):
                    if read_pos(rm, "db") is not None:
                        break
                    await asyncio.sleep(0.02)
                assert read_pos(rm, "db") is not None
                # A write on the replica is replayed to the primary (as the edge would do on fly-replay)...
                resp = await request(rp.port, "POST", "/notes", body=b"first note")
                assert resp.header(b"fly-replay") == b"instance=m-gru"
                resp = await request(pp.port, "POST", "/notes", body=b"first note")
                assert resp.status == 201
                note = json.loads(resp.body)["id"]
                cookie = resp.all(b"set-cookie")[0].split(b";")[0].decode()
                txid = int(cookie.split("=")[1], 16)
                assert txid == change_counter(pm / "db")  # the cookie is the commit's position, not an older one
                # ...and the client's next read on the replica waits for that position and sees its write.
                resp = await request(rp.port, "GET", f"/notes/{note}", [("Cookie", cookie)])
                assert (resp.status, resp.body) == (200, b"first note")
                pos = read_pos(rm, "db")
                assert pos is not None and pos.txid >= txid
                assert read_lag(rm) is not None
        finally:
            await replica.close()
            await primary.close()
        # The primary gone, the replica forgets it (a write would then wait, then 503).
        replica2 = ReplicaReplicator(rm, "db", "http://127.0.0.1:9", lag_interval=0.05, retry=0.05)
        await replica2.start()
        try:
            await asyncio.sleep(0.2)
            assert read_primary(rm) is None and read_role(rm)[0] == "unknown"
        finally:
            await replica2.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_litefs_events_wake_waiting_readers_without_inotify_or_polling(tmp_path: Path) -> None:
    """The replica's stand-in serves LiteFS's /events; the proxy follows it with inotify off and a 60 s poll."""

    async def main() -> None:
        pm, rm = tmp_path / "primary", tmp_path / "replica"
        primary = PrimaryReplicator(pm, "db", "m-gru", Endpoint("127.0.0.1", 0))
        await primary.start()
        replica = ReplicaReplicator(rm, "db", f"http://127.0.0.1:{primary.port}", addr=Endpoint("127.0.0.1", 0))
        await replica.start()
        app = NotesApp(pm / "db")
        try:
            async with upstream(app.handle) as app_p, upstream(NotesApp(rm / "db").handle) as app_r, \
                    proxy(make_cfg(app_p.port), pm, before_cookie=primary.sync) as pp, \
                    proxy(make_cfg(app_r.port, watch="poll", poll_interval=60.0, txid_timeout=10.0,
                                   litefs_url=f"http://127.0.0.1:{replica.port}"), rm) as rp:
                assert (await request(pp.port, "POST", "/notes", body=b"migration")).status == 201
                for _ in range(200):
                    if read_pos(rm, "db") is not None and rp.events is not None and rp.events.connected:
                        break
                    await asyncio.sleep(0.02)
                assert rp.watcher is not None and not rp.watcher.notifying
                # The read is sent first, with the position the next commit will have: it must wait for it.
                counter = change_counter(pm / "db")
                assert counter is not None
                cookie = f"__txid={counter + 1:016x}"
                read = asyncio.create_task(request(rp.port, "GET", "/notes/2", [("Cookie", cookie)], timeout=8.0))
                while rp.watcher.waiting == 0:
                    await asyncio.sleep(0.01)
                resp = await request(pp.port, "POST", "/notes", body=b"via events")
                assert json.loads(resp.body)["id"] == 2
                assert resp.all(b"set-cookie")[0].startswith(cookie.encode() + b";")
                resp = await read
                assert (resp.status, resp.body) == (200, b"via events")  # a 60 s poll would have 504ed at 10 s
                assert rp.watcher.wakeups >= 1
        finally:
            await replica.close()
            await primary.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_wal_mode_is_detected(tmp_path: Path) -> None:
    from litefs_proxy.replicator import is_wal

    db = tmp_path / "db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    assert not is_wal(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    assert is_wal(db) and not is_wal(tmp_path / "absent")
