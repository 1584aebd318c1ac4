"""The data path over loopback: a tiny upstream app on port 0, a temp dir as the LiteFS mount."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from edge_proxy.http1 import Exchange
from litefs_proxy.globs import compile_glob
from litefs_proxy.mountfiles import format_lag, write_atomic
from tests.litefs_proxy.helpers import (
    as_orphan,
    as_primary,
    as_replica,
    make_cfg,
    proxy,
    request,
    set_pos,
    upstream,
)

COOKIE = re.compile(r"__txid=([0-9a-f]{16}); Path=/; "
                    r"Expires=[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT; HttpOnly")


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 30))


def go_error(status: int, body: bytes) -> Callable[[object], None]:
    def check(resp: object) -> None:
        from tests.litefs_proxy.helpers import Response
        assert isinstance(resp, Response)
        assert (resp.status, resp.body) == (status, body)
        assert resp.header(b"content-type") == b"text/plain; charset=utf-8"
        assert resp.header(b"x-content-type-options") == b"nosniff"
    return check


# -- writes --------------------------------------------------------------------------------------------

def test_write_on_primary_sets_litefs_cookie(tmp_path: Path) -> None:
    async def main() -> None:
        as_primary(tmp_path, txid=0x2A)
        async with upstream() as up, proxy(make_cfg(up.port), tmp_path) as p:
            resp = await request(p.port, "POST", "/things", body=b"hello")
            assert resp.status == 200 and resp.body == b"app:5" and resp.header(b"x-app") == b"1"
            cookies = resp.all(b"set-cookie")
            assert len(cookies) == 1
            match = COOKIE.fullmatch(cookies[0].decode())
            assert match is not None and match.group(1) == "000000000000002a"
            assert [s.method for s in up.seen] == ["POST"]

    run(main)


def test_cookie_position_is_read_after_the_response_head(tmp_path: Path) -> None:
    async def main() -> None:
        as_primary(tmp_path, txid=1)

        async def app(ex: Exchange) -> None:  # the app's commit moves the position before it answers
            set_pos(tmp_path, 7)
            ex.respond(201, [], b"")

        async with upstream(app) as up, proxy(make_cfg(up.port), tmp_path) as p:
            resp = await request(p.port, "PUT", "/x", body=b"1")
            assert resp.status == 201
            assert resp.all(b"set-cookie")[0].startswith(b"__txid=0000000000000007;")

    run(main)


def test_before_cookie_hook_runs(tmp_path: Path) -> None:
    async def main() -> None:
        as_primary(tmp_path, txid=1)
        hook = lambda: set_pos(tmp_path, 9)  # noqa: E731
        async with upstream() as up, proxy(make_cfg(up.port), tmp_path, before_cookie=hook) as p:
            resp = await request(p.port, "DELETE", "/x")
            assert resp.all(b"set-cookie")[0].startswith(b"__txid=0000000000000009;")

    run(main)


def test_write_on_replica_answers_fly_replay(tmp_path: Path) -> None:
    async def main() -> None:
        as_replica(tmp_path, "m-gru-1")
        async with upstream() as up, proxy(make_cfg(up.port), tmp_path) as p:
            resp = await request(p.port, "POST", "/things", body=b"x" * 1000)
            assert resp.status == 200 and resp.body == b""
            assert resp.header(b"fly-replay") == b"instance=m-gru-1"
            assert resp.all(b"set-cookie") == [] and up.seen == []

    run(main)


def test_options_is_a_write(tmp_path: Path) -> None:
    async def main() -> None:
        as_replica(tmp_path, "m1")
        async with upstream() as up, proxy(make_cfg(up.port), tmp_path) as p:
            resp = await request(p.port, "OPTIONS", "/x")
            assert resp.header(b"fly-replay") == b"instance=m1" and up.seen == []
            as_primary(tmp_path, txid=3)
            resp = await request(p.port, "OPTIONS", "/x")
            assert resp.all(b"set-cookie")[0].startswith(b"__txid=0000000000000003;")

    run(main)


def test_no_primary_503_after_timeout(tmp_path: Path) -> None:
    async def main() -> None:
        as_orphan(tmp_path)
        async with upstream() as up, proxy(make_cfg(up.port, primary_redirect_timeout=0.2), tmp_path) as p:
            resp = await request(p.port, "POST", "/x", body=b"1")
            go_error(503, b"Proxy error: no primary available\n")(resp)
            assert up.seen == []

    run(main)


def test_write_waits_for_a_primary_to_appear(tmp_path: Path) -> None:
    async def main() -> None:
        as_orphan(tmp_path)
        async with upstream() as up, proxy(make_cfg(up.port, primary_redirect_timeout=10.0, poll_interval=0.0),
                                           tmp_path) as p:
            task = asyncio.create_task(request(p.port, "POST", "/x", body=b"1"))
            while p.watcher is not None and p.watcher.waiting == 0:
                await asyncio.sleep(0.01)
            as_replica(tmp_path, "m-new")
            resp = await task
            assert resp.header(b"fly-replay") == b"instance=m-new"

    run(main)


# -- reads ---------------------------------------------------------------------------------------------

def test_read_waits_for_position_then_forwards(tmp_path: Path) -> None:
    async def main() -> None:
        as_replica(tmp_path, txid=3)
        async with upstream() as up, proxy(make_cfg(up.port, poll_interval=0.0), tmp_path) as p:  # inotify only
            task = asyncio.create_task(request(p.port, "GET", "/r", [("Cookie", "a=1; __txid=0000000000000005")]))
            while p.watcher is not None and p.watcher.waiting == 0:
                await asyncio.sleep(0.01)
            assert up.seen == []  # held while the replica is behind
            set_pos(tmp_path, 4)
            await asyncio.sleep(0.05)
            assert up.seen == [] and not task.done()
            set_pos(tmp_path, 5)
            resp = await task
            assert resp.status == 200 and [s.target for s in up.seen] == ["/r"]
            assert resp.all(b"set-cookie") == []  # reads never get a cookie

    run(main)


def test_read_times_out_with_504(tmp_path: Path) -> None:
    async def main() -> None:
        as_replica(tmp_path, txid=3)
        async with upstream() as up, proxy(make_cfg(up.port, txid_timeout=0.2), tmp_path) as p:
            resp = await request(p.port, "GET", "/r", [("Cookie", "__txid=00000000000000ff")])
            go_error(504, b"Proxy timeout\n")(resp)
            assert up.seen == []

    run(main)


@pytest.mark.parametrize("cookie", ["__txid=zzzzzzzzzzzzzzzz", "__txid=ff", "__txid=0000000000000000",
                                    "__txid=", "other=00000000000000ff"])
def test_invalid_short_zero_cookies_forward_at_once(tmp_path: Path, cookie: str) -> None:
    async def main() -> None:
        as_replica(tmp_path, txid=3)
        async with upstream() as up, proxy(make_cfg(up.port, txid_timeout=30.0), tmp_path) as p:
            resp = await request(p.port, "GET", "/r", [("Cookie", cookie)], timeout=5.0)
            assert resp.status == 200 and len(up.seen) == 1

    run(main)


def test_database_missing_forwards_at_once_and_sets_no_cookie(tmp_path: Path) -> None:
    async def main() -> None:
        async with upstream() as up, proxy(make_cfg(up.port, txid_timeout=30.0), tmp_path) as p:
            resp = await request(p.port, "GET", "/r", [("Cookie", "__txid=00000000000000ff")], timeout=5.0)
            assert resp.status == 200
            resp = await request(p.port, "POST", "/w", body=b"1")  # no .primary, no .lag: old-LiteFS primary
            assert resp.status == 200 and resp.all(b"set-cookie") == []
            assert len(up.seen) == 2

    run(main)


# -- order of the rules --------------------------------------------------------------------------------

def test_passthrough_wins_over_health_and_writes(tmp_path: Path) -> None:
    async def main() -> None:
        as_replica(tmp_path, "m1")
        globs = (compile_glob("/litefs/*"), compile_glob("*.png"))
        async with upstream() as up, proxy(make_cfg(up.port, passthrough=globs), tmp_path) as p:
            resp = await request(p.port, "GET", "/litefs/health")
            assert resp.body == b"app:0"  # the app answered, not the health check
            resp = await request(p.port, "POST", "/img/a.png?v=1", body=b"12")
            assert resp.body == b"app:2" and resp.header(b"fly-replay") is None and resp.all(b"set-cookie") == []
            resp = await request(p.port, "GET", "/img/a.png", [("Cookie", "__txid=00000000000000ff")])
            assert resp.status == 200  # no wait either
            assert [s.target for s in up.seen] == ["/litefs/health", "/img/a.png?v=1", "/img/a.png"]
            as_primary(tmp_path, txid=8)
            resp = await request(p.port, "POST", "/img/b.png", body=b"1")
            assert resp.body == b"app:1" and resp.all(b"set-cookie") == []  # passthrough: no cookie on the primary
            resp = await request(p.port, "POST", "/other", body=b"1")
            assert resp.all(b"set-cookie")[0].startswith(b"__txid=0000000000000008;")

    run(main)


def test_always_forward_turns_get_into_a_write_without_cookie(tmp_path: Path) -> None:
    async def main() -> None:
        as_replica(tmp_path, "m1")
        globs = (compile_glob("/admin/*"),)
        async with upstream() as up, proxy(make_cfg(up.port, always_forward=globs), tmp_path) as p:
            resp = await request(p.port, "GET", "/admin/x")
            assert resp.header(b"fly-replay") == b"instance=m1" and up.seen == []
            as_primary(tmp_path, txid=4)
            resp = await request(p.port, "GET", "/admin/x")
            assert resp.status == 200 and resp.all(b"set-cookie") == [] and len(up.seen) == 1
            resp = await request(p.port, "GET", "/other")
            assert resp.status == 200

    run(main)


def test_health(tmp_path: Path) -> None:
    async def main() -> None:
        as_replica(tmp_path)
        async with upstream() as up, proxy(make_cfg(up.port, max_lag=1.0), tmp_path) as p:
            resp = await request(p.port, "GET", "/litefs/health")
            assert (resp.status, resp.body) == (200, b"OK\n")
            write_atomic(tmp_path / ".lag", format_lag(1500))
            go_error(503, b"Replication lag exceeded\n")(await request(p.port, "GET", "/litefs/health"))
            as_orphan(tmp_path)  # lag 2147483647 ms: LiteFS's Lag() is 0 while no primary was heard from
            resp = await request(p.port, "GET", "/litefs/health")
            assert (resp.status, resp.body) == (200, b"OK\n")
            assert up.seen == []
        async with upstream() as up, proxy(make_cfg(up.port, max_lag=0.0), tmp_path) as p:
            resp = await request(p.port, "GET", "/litefs/health")
            assert (resp.status, resp.body) == (200, b"OK\n")  # max-lag = 0 disables the check

    run(main)


# -- the target ----------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_502_on_refused_connect_after_boot_retry(tmp_path: Path) -> None:
    async def main() -> None:
        as_primary(tmp_path)
        port = _free_port()
        async with proxy(make_cfg(port, connect_retry=0.3), tmp_path) as p:
            resp = await request(p.port, "GET", "/")
            go_error(502, f"Proxy error: dial tcp 127.0.0.1:{port}: connect: connection refused\n".encode())(resp)

    run(main)


def test_boot_retry_reaches_an_app_that_starts_late(tmp_path: Path) -> None:
    async def main() -> None:
        as_primary(tmp_path)
        port = _free_port()
        async with proxy(make_cfg(port, connect_retry=10.0), tmp_path) as p:
            task = asyncio.create_task(request(p.port, "GET", "/"))
            await asyncio.sleep(0.3)
            assert not task.done()
            async with upstream(port=port):
                resp = await task
                assert resp.status == 200

    run(main)


def test_server_sent_events_arrive_one_by_one(tmp_path: Path) -> None:
    async def main() -> None:
        as_primary(tmp_path)
        got: asyncio.Queue[bytes] = asyncio.Queue()

        async def app(ex: Exchange) -> None:
            ex.start(200, [(b"content-type", b"text/event-stream")], length=None)
            for i in range(5):
                ex.write(f"data: {i}\n\n".encode())
                # The next event is produced only after the client has seen this one: nothing is buffered.
                assert await asyncio.wait_for(got.get(), 5) == f"data: {i}\n\n".encode()
            ex.end()

        async with upstream(app) as up, proxy(make_cfg(up.port), tmp_path) as p:
            resp = await request(p.port, "GET", "/events", on_chunk=got.put_nowait)
            assert resp.status == 200 and resp.chunks == [f"data: {i}\n\n".encode() for i in range(5)]

    run(main)


def test_multi_valued_headers_survive(tmp_path: Path) -> None:
    async def main() -> None:
        as_primary(tmp_path, txid=2)

        async def app(ex: Exchange) -> None:
            ex.respond(200, [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"x-multi", b"one"),
                             (b"x-multi", b"two")], b"ok")

        async with upstream(app) as up, proxy(make_cfg(up.port), tmp_path) as p:
            resp = await request(p.port, "POST", "/w", [("X-Req", "r1"), ("X-Req", "r2")], b"")
            assert resp.all(b"x-multi") == [b"one", b"two"]
            cookies = resp.all(b"set-cookie")
            assert cookies[0].startswith(b"__txid=0000000000000002;") and cookies[1:] == [b"a=1", b"b=2"]
            assert [v for k, v in up.seen[0].headers if k == b"x-req"] == [b"r1", b"r2"]

    run(main)


def test_websocket_upgrade_is_tunnelled(tmp_path: Path) -> None:
    async def main() -> None:
        as_replica(tmp_path)

        async def app(ex: Exchange) -> None:
            ex.start(101, [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")], length=None, no_body=True)
            ex.tunnel(lambda data: ex.write_raw(b"echo:" + data), lambda: None)
            await asyncio.sleep(1)

        async with upstream(app) as up, proxy(make_cfg(up.port), tmp_path) as p:
            reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
            writer.write(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ")
            writer.write(b"ping")
            assert await reader.readexactly(9) == b"echo:ping"
            writer.close()

    run(main)


# -- forward mode and primary-region mode --------------------------------------------------------------

def test_forward_mode_proxies_a_5mib_write_to_the_primary(tmp_path: Path) -> None:
    async def main() -> None:
        primary_mount, replica_mount = tmp_path / "p", tmp_path / "r"
        primary_mount.mkdir()
        replica_mount.mkdir()
        as_primary(primary_mount, txid=0x11)
        body = bytes(range(256)) * (5 * 4096)  # 5 MiB: over the 1 MiB fly-replay limit
        async with upstream() as up, proxy(make_cfg(up.port, mode="forward"), primary_mount) as prim:
            as_replica(replica_mount, "127.0.0.1")
            cfg = make_cfg(up.port, mode="forward", forward_target="{primary}:" + str(prim.port))
            async with proxy(cfg, replica_mount, hostname="m-replica") as rep:
                resp = await request(rep.port, "POST", "/upload", body=body)
                assert resp.status == 200 and resp.body == f"app:{len(body)}".encode()
                assert resp.all(b"set-cookie")[0].startswith(b"__txid=0000000000000011;")
                assert resp.header(b"fly-replay") is None
                assert [(k, v) for k, v in up.seen[0].headers if k == b"litefs-proxy-forwarded"] == []

    run(main)


def test_forwarded_write_reaching_a_replica_is_not_forwarded_again(tmp_path: Path) -> None:
    async def main() -> None:
        as_replica(tmp_path, "127.0.0.1")
        async with upstream() as up, proxy(make_cfg(up.port, mode="forward"), tmp_path) as p:
            resp = await request(p.port, "POST", "/x", [("Litefs-Proxy-Forwarded", "m2")], b"1")
            go_error(503, b"Proxy error: no primary available\n")(resp)
            assert up.seen == []

    run(main)


def test_primary_region_mode(tmp_path: Path) -> None:
    async def main() -> None:
        async with upstream() as up:
            sjc = make_cfg(up.port, mode="primary-region", region="sjc", primary_region="gru", db="")
            gru = make_cfg(up.port, mode="primary-region", region="gru", primary_region="gru", db="")
            async with proxy(sjc, None) as ps, proxy(gru, None) as pg:
                resp = await request(ps.port, "POST", "/w", body=b"1")
                assert resp.header(b"fly-replay") == b"region=gru" and up.seen == []
                assert (await request(ps.port, "GET", "/r")).status == 200 and len(up.seen) == 1
                resp = await request(pg.port, "POST", "/w", [("Fly-Replay-Src", "instance=m1;region=sjc")], b"1")
                assert resp.status == 200 and len(up.seen) == 2
                window = resp.all(b"set-cookie")[0].split(b";")[0].decode()
                assert window.startswith("__sixpn_primary=")
                resp = await request(ps.port, "GET", "/r", [("Cookie", window)])
                assert resp.header(b"fly-replay") == b"region=gru" and len(up.seen) == 2
                resp = await request(pg.port, "GET", "/r", [("Cookie", window)])
                assert resp.status == 200 and resp.header(b"fly-replay") is None
                resp = await request(ps.port, "GET", "/litefs/health")
                assert resp.body == b"OK\n"

    run(main)


# -- Go's server timeouts ------------------------------------------------------------------------------

def test_write_timeout_closes_the_connection(tmp_path: Path) -> None:
    async def main() -> None:
        as_primary(tmp_path)

        async def slow(ex: Exchange) -> None:
            await asyncio.sleep(2)
            ex.respond(200, [], b"late")

        async with upstream(slow) as up, proxy(make_cfg(up.port, write_timeout=0.2), tmp_path) as p:
            resp = await request(p.port, "GET", "/slow", timeout=5.0)
            assert resp.status == 0 and resp.body == b""  # closed, nothing written
        async with upstream() as up, proxy(make_cfg(up.port, write_timeout=5.0), tmp_path) as p:
            assert (await request(p.port, "GET", "/fast")).status == 200

    run(main)


def test_read_timeout_closes_a_connection_whose_body_never_ends(tmp_path: Path) -> None:
    async def main() -> None:
        as_primary(tmp_path)
        async with upstream() as up, proxy(make_cfg(up.port, read_timeout=0.2), tmp_path) as p:
            reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
            writer.write(b"POST /w HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12")
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed without a response
            writer.close()
            assert (await request(p.port, "POST", "/w", body=b"0123456789")).status == 200

    run(main)


def test_writes_follow_a_primary_change_and_a_bad_primary_file_is_no_primary(tmp_path: Path) -> None:
    async def main() -> None:
        as_replica(tmp_path, "m1")
        async with upstream() as up, proxy(make_cfg(up.port, primary_redirect_timeout=0.1), tmp_path) as p:
            assert (await request(p.port, "PUT", "/x")).header(b"fly-replay") == b"instance=m1"
            (tmp_path / ".primary").write_text("m2\n")  # the lease moved
            assert (await request(p.port, "PUT", "/x")).header(b"fly-replay") == b"instance=m2"
            (tmp_path / ".primary").write_text("two words\n")  # not LiteFS's format: no usable primary
            go_error(503, b"Proxy error: no primary available\n")(await request(p.port, "PUT", "/x"))
            assert up.seen == []

    run(main)
