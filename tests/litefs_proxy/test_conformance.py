"""Conformance with LiteFS's own proxy, check by check, over loopback.

Each check names what LiteFS does and where (github.com/superfly/litefs at a51e72d: `http/proxy_server.go`,
`cmd/litefs/config.go`, `cmd/litefs/mount_linux.go`, `store.go`, `fuse/*.go`; Go 1.21's `net/http` and `os` for
the server and config behaviour LiteFS inherits). The mount is a temp dir holding the control files in LiteFS's
byte formats (`fuse/lag_node.go:26`, `fuse/pos_node.go`, `fuse/primary_node.go`); LiteFS's `/events` stream is
faked with its JSON shape (`store.go:1812-1858`, `http/server.go:779-801`). Requests are written as raw bytes
and responses read as raw bytes, so header spelling and framing are checked as a client sees them.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from litefs_proxy.config import parse_config
from litefs_proxy.globs import compile_glob
from tests.litefs_proxy.helpers import make_cfg, proxy

# -- the mount, in LiteFS's bytes --------------------------------------------------------------------------

LAG_PRIMARY = b"+000000000\n"  # fuse/lag_node.go:26,71  fmt.Sprintf("%+010d\n", 0)
LAG_UNKNOWN = b"+2147483647\n"  # fuse/lag_node.go:72-73  math.MaxInt32 while PrimaryTimestamp() == -1


def write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def pos_bytes(txid: int) -> bytes:
    return b"%016x/%016x\n" % (txid, 0x83B05248774CE767)  # fuse/pos_node.go: ltx.Pos.String() + "\n"


def primary_node(mount: Path, txid: int = 1) -> None:
    (mount / ".primary").unlink(missing_ok=True)  # fuse/primary_node.go: absent on the primary
    write(mount / ".lag", LAG_PRIMARY)
    write(mount / "db-pos", pos_bytes(txid))


def replica_node(mount: Path, primary: str = "m-gru-1", txid: int = 1, lag_ms: int = 12) -> None:
    write(mount / ".primary", primary.encode() + b"\n")
    write(mount / ".lag", b"%+010d\n" % lag_ms)
    write(mount / "db-pos", pos_bytes(txid))


def orphan_node(mount: Path) -> None:
    (mount / ".primary").unlink(missing_ok=True)
    write(mount / ".lag", LAG_UNKNOWN)


# -- raw HTTP on both sides --------------------------------------------------------------------------------

@dataclass
class Raw:
    """A response as bytes: status line, header lines as sent, body (de-chunked when chunked)."""

    data: bytes
    status: int = 0
    lines: list[bytes] = field(default_factory=list)
    body: bytes = b""
    closed: bool = False
    at: float = 0.0  # when it was complete (monotonic)

    def header(self, name: str) -> bytes | None:
        for line in self.lines:
            key, _, value = line.partition(b":")
            if key.decode().lower() == name.lower():
                return value.strip()
        return None

    def names(self) -> list[bytes]:
        return [line.partition(b":")[0] for line in self.lines]


def parse_raw(data: bytes, closed: bool) -> Raw | None:
    """One whole response at the start of `data`, or None if incomplete."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    first, *lines = head.split(b"\r\n")
    if first.startswith(b"HTTP/1.1 100 "):
        return parse_raw(rest, closed)
    resp = Raw(data, int(first.split(b" ")[1]), lines, closed=closed)
    length = resp.header("content-length")
    if resp.header("transfer-encoding") == b"chunked":
        body, ok = _dechunk(rest)
        if not ok:
            return None
        resp.body = body
    elif length is not None:
        if len(rest) < int(length):
            return None
        resp.body = rest[:int(length)]
    elif resp.status in (204, 304) or 100 <= resp.status < 200:
        resp.body = b""
    else:
        if not closed:
            return None
        resp.body = rest
    return resp


def _dechunk(data: bytes) -> tuple[bytes, bool]:
    out = b""
    while True:
        line, sep, data = data.partition(b"\r\n")
        if not sep:
            return out, False
        size = int(line.split(b";")[0], 16)
        if size == 0:
            return out, data.startswith(b"\r\n")
        if len(data) < size + 2:
            return out, False
        out += data[:size]
        data = data[size + 2:]


async def exchange(port: int, request: bytes, *, timeout: float = 10.0, head_only: bool = False) -> Raw:
    """Send raw bytes on a new connection; read one response (or until the connection closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = b""
    try:
        writer.write(request)
        async with asyncio.timeout(timeout):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return parse_raw(data, True) or Raw(data, closed=True)
                data += chunk
                if head_only and b"\r\n\r\n" in data:
                    first, *lines = data.partition(b"\r\n\r\n")[0].split(b"\r\n")
                    return Raw(data, int(first.split(b" ")[1]), lines)
                resp = parse_raw(data, False)
                if resp is not None:
                    resp.at = time.monotonic()
                    # Does the server close after this response? Look briefly for the EOF.
                    try:
                        more = await asyncio.wait_for(reader.read(1), 0.3)
                        resp.closed = more == b""
                    except TimeoutError:
                        resp.closed = False
                    return resp
    finally:
        writer.close()


def req(method: str, path: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: app.test", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class App:
    """The app behind the proxy: records each request's raw head, answers with `reply`."""

    port: int = 0
    heads: list[bytes] = field(default_factory=list)
    reply: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\napp"


@asynccontextmanager
async def app_server(reply: bytes | None = None,
                     handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]] | None
                     = None) -> AsyncIterator[App]:
    app = App()
    if reply is not None:
        app.reply = reply

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                app.heads.append(head)
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if m:
                    await reader.readexactly(int(m.group(1)))
                if handler is not None:
                    await handler(reader, writer, head)
                    continue
                writer.write(app.reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, limit=1 << 21)
    app.port = int(server.sockets[0].getsockname()[1])
    try:
        yield app
    finally:
        server.close()


def run(coro: Callable[[], Awaitable[None]], limit: float = 30.0) -> None:
    asyncio.run(asyncio.wait_for(coro(), limit))


def go_error_ok(resp: Raw, status: int, message: bytes) -> None:
    """Go's http.Error (net/http/server.go): text/plain; charset=utf-8, nosniff, message + "\\n"."""
    assert resp.status == status, resp.data[:300]
    assert resp.body == message + b"\n"
    assert resp.header("Content-Type") == b"text/plain; charset=utf-8"
    assert resp.header("X-Content-Type-Options") == b"nosniff"
    assert resp.header("fly-proxy-error") is None


# == config (cmd/litefs/config.go) ==========================================================================

BASE = 'fuse:\n  dir: "/litefs"\nproxy:\n  addr: ":8080"\n  target: "localhost:8081"\n  db: "db"\n'


def test_config_defaults() -> None:
    """config.go:68-73 + proxy_server.go:27-36: max-lag 10s, primary-redirect 5s, read-header 10s, idle 30s."""
    p = parse_config(BASE).proxy
    assert p is not None
    assert (p.max_lag, p.primary_redirect_timeout, p.read_timeout, p.read_header_timeout, p.write_timeout,
            p.idle_timeout) == (10.0, 5.0, 0.0, 10.0, 0.0, 30.0)


@pytest.mark.parametrize(("text", "env", "want"), [
    # config.go:237-263: os.Expand over the whole file, so both $VAR and ${VAR}
    ("addr: \":$PROXY_PORT\"", {"PROXY_PORT": "9090"}, ":9090"),
    ("addr: \":${PROXY_PORT}\"", {"PROXY_PORT": "9091"}, ":9091"),
    # config.go:239: the name is trimmed
    ("addr: \":${ PROXY_PORT }\"", {"PROXY_PORT": "9092"}, ":9092"),
], ids=["dollar-name", "dollar-brace", "trimmed"])
def test_config_expands_like_os_expand(text: str, env: dict[str, str], want: str) -> None:
    doc = BASE.replace('addr: ":8080"', text)
    p = parse_config(doc, env=env).proxy
    assert p is not None and str(p.addr) == want


@pytest.mark.parametrize(("expr", "env", "want"), [
    ('${FLY_REGION == "ord"}', {"FLY_REGION": "ord"}, "true"),  # config.go:248-253, double quotes
    ('${FLY_REGION == "ord"}', {"FLY_REGION": "gru"}, "false"),
    ("${FLY_REGION != 'ord'}", {"FLY_REGION": "gru"}, "true"),  # config.go:241-246, single quotes
    ("${FLY_REGION == PRIMARY_REGION}", {"FLY_REGION": "gru", "PRIMARY_REGION": "gru"}, "true"),  # :255-260
    ("${FLY_REGION != PRIMARY_REGION}", {"FLY_REGION": "gru", "PRIMARY_REGION": "gru"}, "false"),
    ("a$UNSET-b", {}, "a-b"),  # os.Getenv of an unset name is ""
    ("cost: $$5", {}, "cost: 5"),  # os.Expand: $$ is the special variable "$" (unset)
    ("x${}y", {}, "xy"),  # os.Expand: bad syntax "${}" is eaten
    ("end$", {}, "end$"),  # os.Expand: a lone trailing $ stays
], ids=["eq-dq-true", "eq-dq-false", "ne-sq", "eq-var", "ne-var", "unset", "dollar-dollar", "empty-brace",
        "trailing"])
def test_config_expression_syntax(expr: str, env: dict[str, str], want: str) -> None:
    from litefs_proxy.config import expand_env
    assert expand_env(expr, env) == want


def test_config_without_target_skips_the_proxy() -> None:
    """mount_linux.go:520-524: no proxy target -> "no proxy target set, skipping proxy" (not an error)."""
    cfg = parse_config('fuse:\n  dir: "/litefs"\nproxy:\n  addr: ":8080"\n')
    assert cfg.proxy is None


def test_config_without_proxy_section_skips_the_proxy() -> None:
    """config.go:28-43: every section optional; Proxy.Target "" -> skipped (mount_linux.go:521)."""
    cfg = parse_config('fuse:\n  dir: "/litefs"\nlease:\n  type: "static"\n')
    assert cfg.proxy is None


def test_config_http_addr_is_the_events_source() -> None:
    """http/server.go:34 DefaultAddr ":20202": LiteFS's API (and /events) is where `http.addr` says."""
    p = parse_config(BASE + 'http:\n  addr: ":20299"\n').proxy
    assert p is not None and p.litefs_url == "http://localhost:20299"
    p = parse_config(BASE).proxy
    assert p is not None and p.litefs_url == "http://localhost:20202"


# == health (proxy_server.go:224-234, store.go:1652-1659) ===================================================

@pytest.mark.parametrize(("lag", "status"), [
    (LAG_PRIMARY, 200),  # store.go:1655 primary: 0
    (LAG_UNKNOWN, 200),  # store.go:1654-1655: -1 (not ready / no primary yet) reports 0 lag
    (b"+000003000\n", 200),  # 3 s < 10 s
    (b"+000020000\n", 503),  # proxy_server.go:226-229
], ids=["primary", "unknown-lag", "small-lag", "over-max-lag"])
def test_health(tmp_path: Path, lag: bytes, status: int) -> None:
    async def main() -> None:
        write(tmp_path / ".lag", lag)
        async with app_server() as app, proxy(make_cfg(app.port), tmp_path) as p:
            resp = await exchange(p.port, req("GET", "/litefs/health"))
            if status == 200:
                assert (resp.status, resp.body) == (200, b"OK\n")
                assert resp.header("Content-Type") == b"text/plain; charset=utf-8"  # Go sniffs "OK\n"
            else:
                go_error_ok(resp, 503, b"Replication lag exceeded")
            assert app.heads == []

    run(main)


def test_health_max_lag_zero_disables(tmp_path: Path) -> None:
    """proxy_server.go:226: `s.MaxLag > 0 && lag > s.MaxLag`."""
    async def main() -> None:
        write(tmp_path / ".lag", b"+000090000\n")
        async with app_server() as app, proxy(make_cfg(app.port, max_lag=0.0), tmp_path) as p:
            resp = await exchange(p.port, req("GET", "/litefs/health"))
            assert (resp.status, resp.body) == (200, b"OK\n")

    run(main)


def test_head_of_health_path_is_a_read(tmp_path: Path) -> None:
    """proxy_server.go:205: only GET is the health check; HEAD goes to the target as a read."""
    async def main() -> None:
        replica_node(tmp_path)
        async with app_server() as app, proxy(make_cfg(app.port), tmp_path) as p:
            resp = await exchange(p.port, req("HEAD", "/litefs/health"), head_only=True)
            assert resp.status == 200 and len(app.heads) == 1

    run(main)


# == writes (proxy_server.go:287-309, 311-336) ==============================================================

def test_write_on_primary_sets_the_cookie(tmp_path: Path) -> None:
    """proxy_server.go:324-335: __txid=<ltx.TXID.String()>; Path=/; Expires=now+5m; HttpOnly."""
    async def main() -> None:
        primary_node(tmp_path, txid=0x2A)
        async with app_server() as app, proxy(make_cfg(app.port), tmp_path) as p:
            resp = await exchange(p.port, req("POST", "/w", body=b"hi"))
            assert resp.status == 200 and resp.body == b"app"
            cookie = resp.header("Set-Cookie") or b""
            m = re.fullmatch(rb"__txid=000000000000002a; Path=/; Expires=(.+ GMT); HttpOnly", cookie)
            assert m is not None
            from email.utils import parsedate_to_datetime
            expires = parsedate_to_datetime(m.group(1).decode()).timestamp()
            assert abs(expires - (time.time() + 300)) < 3

    run(main)


def test_write_without_database_sets_no_cookie(tmp_path: Path) -> None:
    """proxy_server.go:325: `if db := s.store.DB(s.DBName); db != nil`."""
    async def main() -> None:
        write(tmp_path / ".lag", LAG_PRIMARY)
        async with app_server() as app, proxy(make_cfg(app.port), tmp_path) as p:
            resp = await exchange(p.port, req("POST", "/w", body=b"hi"))
            assert resp.status == 200 and resp.header("Set-Cookie") is None

    run(main)


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS", "FOO", "PURGE"])
def test_write_on_replica_is_replayed(tmp_path: Path, method: str) -> None:
    """proxy_server.go:210,221,308: every method but GET/HEAD is a write -> 200 with fly-replay, no body
    (Go's net/http takes any token as a method, so FOO is a write too)."""
    async def main() -> None:
        replica_node(tmp_path, "m-gru-1")
        async with app_server() as app, proxy(make_cfg(app.port), tmp_path) as p:
            body = b"x" if method in ("POST", "PUT", "PATCH") else b""
            resp = await exchange(p.port, req(method, "/w", body=body))
            assert resp.status == 200, resp.data[:200]
            assert resp.header("Fly-Replay") == b"instance=m-gru-1"
            assert resp.body == b"" and app.heads == []

    run(main)


def test_unknown_method_on_primary_reaches_the_app_with_a_cookie(tmp_path: Path) -> None:
    """proxy_server.go:324,375-377: isWriteRequest is "not GET/HEAD": an unknown method gets the cookie."""
    async def main() -> None:
        primary_node(tmp_path, txid=7)
        async with app_server() as app, proxy(make_cfg(app.port), tmp_path) as p:
            resp = await exchange(p.port, req("FOO", "/w"))
            assert resp.status == 200 and (resp.header("Set-Cookie") or b"").startswith(b"__txid=0000000000000007")
            assert app.heads and app.heads[0].startswith(b"FOO /w HTTP/1.1\r\n")

    run(main)


def test_replay_header_spelling(tmp_path: Path) -> None:
    """proxy_server.go:308: w.Header().Set("fly-replay", ...) is canonicalised by Go to Fly-Replay."""
    async def main() -> None:
        replica_node(tmp_path, "m1")
        async with app_server() as app, proxy(make_cfg(app.port), tmp_path) as p:
            resp = await exchange(p.port, req("POST", "/w", body=b"x"))
            assert b"Fly-Replay" in resp.names() and b"Content-Length" in resp.names()

    run(main)


def test_no_primary_waits_then_503(tmp_path: Path) -> None:
    """proxy_server.go:288-304: wait up to PrimaryRedirectTimeout, then 503 "Proxy error: no primary available"."""
    async def main() -> None:
        orphan_node(tmp_path)
        async with app_server() as app, proxy(make_cfg(app.port, primary_redirect_timeout=0.3), tmp_path) as p:
            started = time.monotonic()
            resp = await exchange(p.port, req("POST", "/w", body=b"x"))
            assert time.monotonic() - started >= 0.29
            go_error_ok(resp, 503, b"Proxy error: no primary available")

    run(main)


def test_no_primary_then_primary_known_replays(tmp_path: Path) -> None:
    """store.go:490-508: PrimaryInfoWithContext returns as soon as a primary is known."""
    async def main() -> None:
        orphan_node(tmp_path)
        async with app_server() as app, proxy(make_cfg(app.port, primary_redirect_timeout=5.0), tmp_path) as p:
            task = asyncio.create_task(exchange(p.port, req("POST", "/w", body=b"x")))
            await asyncio.sleep(0.2)
            replica_node(tmp_path, "m-new")
            resp = await task
            assert resp.header("Fly-Replay") == b"instance=m-new"

    run(main)


def test_always_forward_get_is_redirected_without_cookie(tmp_path: Path) -> None:
    """proxy_server.go:213-215 (a redirected GET) and :324 (cookie only for non-GET/HEAD)."""
    async def main() -> None:
        replica_node(tmp_path, "m1")
        cfg = make_cfg(0, always_forward=(compile_glob("/admin/*"),))
        async with app_server() as app, proxy(make_cfg(app.port, always_forward=cfg.always_forward),
                                                   tmp_path) as p:
            resp = await exchange(p.port, req("GET", "/admin/x"))
            assert resp.header("Fly-Replay") == b"instance=m1"
            primary_node(tmp_path, txid=3)
            resp = await exchange(p.port, req("GET", "/admin/x"))
            assert resp.status == 200 and resp.header("Set-Cookie") is None

    run(main)


def test_passthrough_wins_and_sets_no_cookie(tmp_path: Path) -> None:
    """proxy_server.go:198-202 (before health and writes) and :324 (`!passthrough`)."""
    async def main() -> None:
        primary_node(tmp_path, txid=3)
        globs = (compile_glob("/litefs/*"), compile_glob("*.png"))
        async with app_server() as app, proxy(make_cfg(app.port, passthrough=globs), tmp_path) as p:
            resp = await exchange(p.port, req("GET", "/litefs/health"))
            assert resp.body == b"app"
            resp = await exchange(p.port, req("POST", "/img/a.png", body=b"x"))
            assert resp.body == b"app" and resp.header("Set-Cookie") is None

    run(main)


def test_forwarded_marker_is_inert_in_replay_mode(tmp_path: Path) -> None:
    """sixpn's forward-mode loop guard must not change what a LiteFS user sees: in replay mode a request
    carrying the marker is a write like any other (proxy_server.go:308)."""
    async def main() -> None:
        replica_node(tmp_path, "m1")
        async with app_server() as app, proxy(make_cfg(app.port), tmp_path) as p:
            resp = await exchange(p.port, req("POST", "/w", "litefs-proxy-forwarded: x", body=b"x"))
            assert resp.status == 200 and resp.header("Fly-Replay") == b"instance=m1"

    run(main)


# == reads (proxy_server.go:236-285) ========================================================================

def test_read_waits_for_the_cookie_txid(tmp_path: Path) -> None:
    """proxy_server.go:259-284: poll db.Pos() until TXID >= the cookie's, then proxy."""
    async def main() -> None:
        replica_node(tmp_path, txid=3)
        async with app_server() as app, proxy(make_cfg(app.port), tmp_path) as p:
            task = asyncio.create_task(exchange(p.port, req("GET", "/r", "Cookie: __txid=0000000000000005")))
            await asyncio.sleep(0.2)
            assert app.heads == []
            write(tmp_path / "db-pos", pos_bytes(5))
            resp = await task
            assert resp.status == 200 and len(app.heads) == 1

    run(main)


def test_read_times_out_504(tmp_path: Path) -> None:
    """proxy_server.go:275-278: after PollTXIDTimeout, 504 "Proxy timeout"."""
    async def main() -> None:
        replica_node(tmp_path, txid=3)
        async with app_server() as app, proxy(make_cfg(app.port, txid_timeout=0.3), tmp_path) as p:
            resp = await exchange(p.port, req("GET", "/r", "Cookie: __txid=00000000000000ff"))
            go_error_ok(resp, 504, b"Proxy timeout")
            assert app.heads == []

    run(main)


@pytest.mark.parametrize("cookie", [
    "__txid; __txid=00000000000000ff",  # Go readCookies: a valueless __txid is the first match (value "")
    "__txid=zz; __txid=00000000000000ff",  # the first __txid wins even when it does not parse
    "__txid=00ff",  # ltx.ParseTXID: exactly 16 hex digits
    "__txid=0000000000000000",  # proxy_server.go:244: txid 0 -> no wait
    "__txid= 00000000000000ff",  # Go keeps the space in the value: not a TXID
], ids=["valueless-first", "bad-first", "short", "zero", "space"])
def test_read_cookie_that_does_not_wait(tmp_path: Path, cookie: str) -> None:
    """proxy_server.go:239-248: r.Cookie(TXIDCookieName) then ltx.ParseTXID; anything but a TXID -> no wait."""
    async def main() -> None:
        replica_node(tmp_path, txid=3)
        async with app_server() as app, proxy(make_cfg(app.port, txid_timeout=5.0), tmp_path) as p:
            started = time.monotonic()
            resp = await exchange(p.port, req("GET", "/r", f"Cookie: {cookie}"))
            assert resp.status == 200 and time.monotonic() - started < 2.0

    run(main)


@pytest.mark.parametrize("cookie", [
    '__txid="00000000000000FF"',  # Go's parseCookieValue strips the quotes; ParseTXID takes upper case
    "a=1; __txid=00000000000000ff",
], ids=["quoted-upper", "second-cookie"])
def test_read_cookie_that_waits(tmp_path: Path, cookie: str) -> None:
    async def main() -> None:
        replica_node(tmp_path, txid=3)
        async with app_server() as app, proxy(make_cfg(app.port, txid_timeout=0.3), tmp_path) as p:
            resp = await exchange(p.port, req("GET", "/r", f"Cookie: {cookie}"))
            assert resp.status == 504

    run(main)


def test_read_without_database_does_not_wait(tmp_path: Path) -> None:
    """proxy_server.go:252-257: no database yet -> proxy at once."""
    async def main() -> None:
        write(tmp_path / ".primary", b"m1\n")
        async with app_server() as app, proxy(make_cfg(app.port, txid_timeout=5.0), tmp_path) as p:
            resp = await exchange(p.port, req("GET", "/r", "Cookie: __txid=00000000000000ff"))
            assert resp.status == 200

    run(main)


def test_reader_wakes_within_milliseconds_without_inotify(tmp_path: Path) -> None:
    """proxy_server.go:24,260: LiteFS re-checks the position every 1 ms. On a FUSE mount inotify is blind;
    with no /events either, the fallback poll must answer about as fast (here: within 25 ms)."""
    async def main() -> None:
        replica_node(tmp_path, txid=3)
        cfg = make_cfg(0, watch="poll", litefs_url="")
        async with app_server() as app, proxy(make_cfg(app.port, watch=cfg.watch, litefs_url=""), tmp_path) as p:
            lags = []
            for txid, pause in zip(range(4, 9), (0.13, 0.171, 0.219, 0.263, 0.337), strict=True):
                task = asyncio.create_task(exchange(p.port, req("GET", "/r", f"Cookie: __txid={txid:016x}")))
                await asyncio.sleep(pause)  # moves at varied phases of any poll
                moved = time.monotonic()
                write(tmp_path / "db-pos", pos_bytes(txid))
                resp = await task
                assert resp.status == 200
                lags.append(resp.at - moved)
            assert sorted(lags)[2] < 0.025, lags

    run(main)


@asynccontextmanager
async def fake_events(lines: asyncio.Queue[dict[str, Any]]) -> AsyncIterator[int]:
    """LiteFS's GET /events (http/server.go:779-801): application/json, one json.Encoder line per event."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            while True:
                line = json.dumps(await lines.get()).encode() + b"\n"
                writer.write(b"%x\r\n%b\r\n" % (len(line), line))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


def test_events_stream_wakes_readers(tmp_path: Path) -> None:
    """A `tx` event (db.go:1766-1776, store.go:1848-1854) wakes a waiting reader; nothing polls."""
    async def main() -> None:
        replica_node(tmp_path, txid=3)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        queue.put_nowait({"type": "init", "data": {"isPrimary": False, "hostname": "m-gru-1"}})
        async with fake_events(queue) as events_port, app_server() as app, \
                proxy(make_cfg(app.port, watch="poll", poll_interval=0.0,
                               litefs_url=f"http://127.0.0.1:{events_port}"), tmp_path) as p:
            await asyncio.sleep(0.3)
            task = asyncio.create_task(exchange(p.port, req("GET", "/r", "Cookie: __txid=0000000000000004")))
            await asyncio.sleep(0.2)
            assert not task.done()
            write(tmp_path / "db-pos", pos_bytes(4))
            await asyncio.sleep(0.2)
            assert not task.done()  # nothing polls: only the event wakes it
            queue.put_nowait({"type": "tx", "db": "db", "data": {
                "txID": "0000000000000004", "postApplyChecksum": "83b05248774ce767", "pageSize": 4096,
                "commit": 2, "timestamp": "2026-12-03T20:00:00Z"}})
            resp = await asyncio.wait_for(task, 2.0)
            assert resp.status == 200

    run(main)


# == the HTTP front end (Go's net/http server, as LiteFS runs it: proxy_server.go:111-113, 146-151) ========

def test_large_request_head_is_accepted(tmp_path: Path) -> None:
    """net/http DefaultMaxHeaderBytes = 1 MB: a 100 KiB cookie is fine."""
    async def main() -> None:
        replica_node(tmp_path)
        async with app_server() as app, proxy(make_cfg(app.port), tmp_path) as p:
            resp = await exchange(p.port, req("GET", "/r", "Cookie: big=" + "a" * 100_000))
            assert resp.status == 200 and len(app.heads) == 1

    run(main)


def test_many_header_fields_are_accepted(tmp_path: Path) -> None:
    """net/http has no limit on the number of fields (only the 1 MB on bytes)."""
    async def main() -> None:
        replica_node(tmp_path)
        async with app_server() as app, proxy(make_cfg(app.port), tmp_path) as p:
            resp = await exchange(p.port, req("GET", "/r", *[f"X-F{i}: {i}" for i in range(300)]))
            assert resp.status == 200 and len(app.heads) == 1

    run(main)


def test_oversized_head_is_gos_431(tmp_path: Path) -> None:
    """net/http server.go (errTooLarge): "431 Request Header Fields Too Large" as plain text, then close."""
    async def main() -> None:
        replica_node(tmp_path)
        async with app_server() as app, proxy(make_cfg(app.port), tmp_path) as p:
            resp = await exchange(p.port, req("GET", "/r", "Cookie: big=" + "a" * (1 << 20) + "b" * 8192))
            assert resp.status == 431, resp.data[:200]
            assert resp.body == b"431 Request Header Fields Too Large"
            assert resp.header("fly-proxy-error") is None and resp.header("Connection") == b"close"

    run(main)


def test_malformed_request_is_gos_plain_400(tmp_path: Path) -> None:
    """net/http server.go: a request it cannot read -> "400 Bad Request" (plain text, Connection: close)."""
    async def main() -> None:
        replica_node(tmp_path)
        async with app_server() as app, proxy(make_cfg(app.port), tmp_path) as p:
            resp = await exchange(p.port, b"GET /r HTTP/1.1\r\nHost: a\r\nbad header line\r\n\r\n")
            assert resp.status == 400, resp.data[:200]
            assert resp.body.startswith(b"400 Bad Request")
            assert resp.header("Content-Type") == b"text/plain; charset=utf-8"
            assert resp.header("fly-proxy-error") is None and resp.header("Connection") == b"close"

    run(main)


def test_missing_host_is_gos_wording(tmp_path: Path) -> None:
    """net/http server.go readRequest: `badRequestError("missing required Host header")` for HTTP/1.1."""
    async def main() -> None:
        replica_node(tmp_path)
        async with app_server() as app, proxy(make_cfg(app.port), tmp_path) as p:
            resp = await exchange(p.port, b"GET /r HTTP/1.1\r\nX: 1\r\n\r\n")
            assert resp.data.startswith(b"HTTP/1.1 400 Bad Request: missing required Host header\r\n")
            assert resp.body == b"400 Bad Request: missing required Host header"

    run(main)


def test_unfinished_head_closes_silently(tmp_path: Path) -> None:
    """net/http server.go: a read timeout while reading the head is a common net error -> close, no reply."""
    async def main() -> None:
        replica_node(tmp_path)
        async with app_server() as app, proxy(make_cfg(app.port, read_header_timeout=0.3), tmp_path) as p:
            resp = await exchange(p.port, b"GET /r HTTP/1.1\r\nHost: a\r\n", timeout=5.0)
            assert resp.closed and resp.data == b""

    run(main)


def test_response_header_names_are_canonical(tmp_path: Path) -> None:
    """proxy_server.go:339-343: headers are copied through Go's http.Header, whose keys are canonical
    (textproto.CanonicalMIMEHeaderKey): x-multi -> X-Multi; values and their order kept."""
    reply = (b"HTTP/1.1 200 OK\r\nx-multi: 1\r\ncontent-type: text/plain\r\nx-multi: 2\r\n"
             b"www-authenticate: Basic\r\ncontent-length: 2\r\n\r\nok")

    async def main() -> None:
        replica_node(tmp_path)
        async with app_server(reply) as app, proxy(make_cfg(app.port), tmp_path) as p:
            resp = await exchange(p.port, req("GET", "/r"))
            assert resp.status == 200
            assert [line for line in resp.lines if line.lower().startswith(b"x-multi")] == \
                [b"X-Multi: 1", b"X-Multi: 2"]
            assert b"Www-Authenticate" in resp.names() and b"Content-Type" in resp.names()
            assert b"Content-Length" in resp.names() and b"Date" in resp.names()  # Go adds Date when missing

    run(main)


def test_chunked_response_framing_is_spelt_like_go(tmp_path: Path) -> None:
    """Go's server writes `Transfer-Encoding: chunked` for a body of unknown length (copyAndFlush flushes
    before the end, proxy_server.go:364)."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
        await writer.drain()

    async def main() -> None:
        replica_node(tmp_path)
        async with app_server(handler=handler) as app, proxy(make_cfg(app.port), tmp_path) as p:
            resp = await exchange(p.port, req("GET", "/r"))
            assert resp.body == b"ok" and resp.header("Transfer-Encoding") == b"chunked"
            assert b"Transfer-Encoding" in resp.names()

    run(main)


def test_request_header_names_reach_the_app_canonical(tmp_path: Path) -> None:
    """Go's server canonicalises request header keys (textproto.ReadMIMEHeader); the transport writes them
    so (proxy_server.go:316): the app sees X-Custom."""
    async def main() -> None:
        replica_node(tmp_path)
        async with app_server() as app, proxy(make_cfg(app.port), tmp_path) as p:
            await exchange(p.port, req("GET", "/r", "x-custom: 1"))
            assert b"\r\nX-Custom: 1\r\n" in app.heads[0]

    run(main)


def test_expect_continue_replay_closes(tmp_path: Path) -> None:
    """net/http server.go: a 100-continue body never read (no 100 sent) -> the reply carries
    Connection: close; LiteFS's replay handler never reads the body (proxy_server.go:308)."""
    async def main() -> None:
        replica_node(tmp_path, "m1")
        async with app_server() as app, proxy(make_cfg(app.port), tmp_path) as p:
            request = (b"POST /w HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            resp = await exchange(p.port, request)
            assert resp.status == 200 and resp.header("Fly-Replay") == b"instance=m1"
            assert not resp.data.startswith(b"HTTP/1.1 100")
            assert resp.header("Connection") == b"close"

    run(main)


def test_unknown_method_pipelined_behind_a_read(tmp_path: Path) -> None:
    """Go reads pipelined requests one after another (net/http server.go serve loop): a FOO behind a GET in
    the same packet is a write like any other."""
    async def main() -> None:
        replica_node(tmp_path, "m1")
        async with app_server() as app, proxy(make_cfg(app.port), tmp_path) as p:
            reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
            writer.write(req("GET", "/a") + req("POST", "/b", body=b"xy") + req("FOO", "/c") + req("GET", "/d"))
            data = b""
            async with asyncio.timeout(5):
                while data.count(b"HTTP/1.1 ") < 4 and (chunk := await reader.read(65536)):
                    data += chunk
            writer.close()
            statuses = re.findall(rb"HTTP/1.1 (\d+)", data)
            assert statuses == [b"200"] * 4, data
            assert data.count(b"Fly-Replay: instance=m1") == 2 and len(app.heads) == 2

    run(main)


def test_keep_alive_and_idle(tmp_path: Path) -> None:
    """Two requests on one connection (net/http keep-alive)."""
    async def main() -> None:
        replica_node(tmp_path)
        async with app_server() as app, proxy(make_cfg(app.port), tmp_path) as p:
            reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
            writer.write(req("GET", "/a") + req("GET", "/b"))
            data = b""
            async with asyncio.timeout(5):
                while data.count(b"app") < 2 and (chunk := await reader.read(65536)):
                    data += chunk
            writer.close()
            assert data.count(b"app") == 2 and len(app.heads) == 2

    run(main)


def test_limits_sized_like_litefs(tmp_path: Path) -> None:
    """LiteFS's transport has no cap on connections to the target (proxy_server.go:115-126: MaxConnsPerHost
    unset) and Go's server has no silent-body timeout unless read-timeout is set."""
    async def main() -> None:
        async with app_server() as app, proxy(make_cfg(app.port), tmp_path) as p:
            assert p.pool.max_per_key >= 1 << 16
            assert p.limits.body_timeout == float("inf")
            assert p.limits.max_head_bytes >= 1 << 20

    run(main)


# == upstream (proxy_server.go:311-351, 406-427) ============================================================

def test_target_down_is_502_in_gos_words(tmp_path: Path) -> None:
    """proxy_server.go:316-319 + dialContextWithRetry (:406-427): refused connects retried, then 502."""
    async def main() -> None:
        replica_node(tmp_path)
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        async with proxy(make_cfg(port, connect_retry=0.3), tmp_path) as p:
            resp = await exchange(p.port, req("GET", "/r"))
            go_error_ok(resp, 502, f"Proxy error: dial tcp 127.0.0.1:{port}: connect: connection refused".encode())

    run(main)


def test_streamed_response_flushes_each_chunk(tmp_path: Path) -> None:
    """proxy_server.go:353-373 copyAndFlush: each read from the app is flushed to the client."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"6\r\ndata:1\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async def main() -> None:
        replica_node(tmp_path)
        async with app_server(handler=handler) as app, proxy(make_cfg(app.port), tmp_path) as p:
            reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
            writer.write(req("GET", "/sse"))
            data = b""
            async with asyncio.timeout(2):
                while b"data:1" not in data and (chunk := await reader.read(65536)):
                    data += chunk
            writer.close()
            assert b"data:1" in data

    run(main)
