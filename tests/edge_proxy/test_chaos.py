"""A bounded, seeded chaos run against the edge's lane and fast path (and the hand-overs between them).

Many concurrent clients do random things (keep-alive GETs with browser fields, HEAD, POST with small and
200 KiB bodies, HTTP/1.0, pipelined pairs, a second request behind one in flight, a head over two writes, slow
readers of a larger body, malformed requests; leaving normally, half-closed, by RST or right after sending)
against three machines (gru1 local; gig1, sjc1 remote) while a chaos task turns fly-replay, dropped connections
and resets mid-response on and off. Then the invariants that a state leak in a hand-over would break: every
response whole, well-formed and answering the request it was read for (the machine's echo of method, target
and request id), unique request ids, no load/flight/lane left behind once quiet, a consistent upstream pool,
no error logged and no task exception. The random choices are seeded per client; the timing is not, so the
checks are the ones that hold for every interleaving.

What the run found is reduced to the tests at the end; the mix leaves out what is still an xfail (see its name).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import random
import re
import socket
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edge_proxy.proxy import EdgeProxy
from tests.edge_proxy.harness import Lab, aio, blob, edge_lab, request
from tests.edge_proxy.test_fastpath import count_fast
from tests.edge_proxy.test_lane import BROWSER, count_lane

SEEDS = (20261126, 7)
WORKERS = 20  # concurrent client loops
RUN_FOR = 4.0  # seconds of chaos per seed
POOL_MAX = 24  # upstream connections per machine (the bound `acquire` waits at)
MACHINES = {"gru1": ("web", "gru"), "gig1": ("web", "gig"), "sjc1": ("web", "sjc")}
HOST = "web.sixpn.test"
#: The machines that drop and reset connections now and then. Not sjc1: fly-replay forces region sjc, and with
#: its only machine marked down every replayed request would be a 503 PR09 (correct, but noise).
FAULTY = ["gru1", "gig1"]
BIG = 200 * 1024  # a POST body larger than a read
BLOB = 600 * 1024  # what a slow reader asks for: more than the edge's write high-water mark (256 KiB)
STREAM = b"".join(b"tick %d\n" % i for i in range(5))
#: Paths answered with a fixed body (see harness.Backend.handle); other paths echo the request as JSON.
FIXED = {"/split": b"split body\n", "/garbage": b"ok\n", "/stream": STREAM, "/delay": b"delayed\n",
         "/via": b"via\n", "/health": b"ok\n"}
PATHS = ["/", "/a/b", "/x", "/split", "/garbage", "/stream", "/delay", "/via", "/health"]
PATH_WEIGHTS = [30, 10, 10, 6, 6, 6, 4, 6, 4]
#: Requests a conforming parser must refuse (400, then close).
MALFORMED = [
    b"GET /bare-lf HTTP/1.1\nHost: web.sixpn.test\n\n",
    b"POST /dup-cl HTTP/1.1\r\nHost: web.sixpn.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"GET /nul HTTP/1.1\r\nHost: web.sixpn.test\r\nX-Bad: a\x00b\r\n\r\n",
]
STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5]\d\d) [\x20-\x7e]*")
TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


# -- requests and responses ------------------------------------------------------------------------------------

@dataclass
class Req:
    method: str
    path: str
    target: str
    version: str = "1.1"
    fields: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    raw: bytes = b""  # a malformed request's bytes

    def wire(self) -> bytes:
        if self.raw:
            return self.raw
        lines = [f"{self.method} {self.target} HTTP/{self.version}", f"Host: {HOST}",
                 *(f"{k}: {v}" for k, v in self.fields.items())]
        if self.body or self.method == "POST":
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


@dataclass
class Resp:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    close_delimited: bool = False

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


class Truncated(Exception):
    """The connection ended inside a response."""


async def read_response(reader: asyncio.StreamReader, method: str) -> Resp | None:
    """One response read by its own framing, strictly; None: the connection ended before any byte of it."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise Truncated(f"head cut: {exc.partial[:200]!r}") from None
    lines = head[:-4].split(b"\r\n")
    status_line = STATUS_LINE.fullmatch(lines[0])
    assert status_line, f"bad status line: {head[:200]!r}"
    status = int(status_line[1])
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        assert sep and TOKEN.fullmatch(name), f"bad header line {line!r} in {head[:400]!r}"
        headers.append((name.decode().lower(), value.strip().decode("latin-1")))
    lengths = [v for k, v in headers if k == "content-length"]
    codings = [v.lower() for k, v in headers if k == "transfer-encoding"]
    assert len(lengths) <= 1 and not (lengths and codings), f"ambiguous framing: {head!r}"
    assert status >= 200, f"an interim response reached the client: {head!r}"
    try:
        if method == "HEAD" or status in (204, 304):
            return Resp(status, headers, b"")
        if codings:
            assert codings == ["chunked"], head
            return Resp(status, headers, await read_chunked(reader))
        if lengths:
            return Resp(status, headers, await reader.readexactly(int(lengths[0])))
        return Resp(status, headers, await reader.read(), close_delimited=True)
    except asyncio.IncompleteReadError as exc:
        raise Truncated(f"body cut after {len(exc.partial)} bytes: {head[:300]!r}") from None


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    out: list[bytes] = []
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line[:-2].split(b";")[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailer fields
            return b"".join(out)
        out.append(await reader.readexactly(size))
        assert await reader.readexactly(2) == b"\r\n", "chunk not followed by CRLF"


# -- the book of everything the clients saw ------------------------------------------------------------------

@dataclass
class Book:
    ids: set[str] = field(default_factory=set)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    truncated: list[tuple[str, str, str]] = field(default_factory=list)
    checked: int = 0

    def check(self, req: Req, resp: Resp | None) -> None:
        """A response the client read whole for `req`: the right one, whole, well-formed."""
        assert resp is not None, f"no response at all (clean EOF) to {req.method} {req.target}"
        self.checked += 1
        self.statuses[resp.status] += 1
        self.errors[resp.header("fly-proxy-error") or ""] += 1
        if req.raw:
            # The parser's refusal (ServerConnection._fail): no exchange, so no request id; it closes.
            assert resp.status == 400 and resp.header("fly-proxy-error") == "PH01", (req.raw, resp)
            assert resp.header("connection") == "close", resp
            return
        rid = resp.header("fly-request-id")
        assert rid, (req.target, resp)
        assert rid not in self.ids, f"request id {rid} seen twice (now for {req.method} {req.target})"
        self.ids.add(rid)
        assert resp.header("server") == "sixpn-edge", (req.target, resp.headers)
        assert [k for k, _ in resp.headers].count("server") == 1, resp.headers
        if resp.close_delimited:
            assert req.version == "1.0" or resp.header("connection") == "close", (req.target, resp.headers)
        if resp.status != 200:
            # 502/503: a dropped or reset machine the request could not be retried past (a POST; or every
            # machine briefly marked down). Never a 504 (no /slow here) nor a 500 (a handler failure).
            assert resp.status in (502, 503) and resp.header("fly-proxy-error"), (req.method, req.target, resp)
            return
        if req.method == "HEAD":
            return
        if req.path in FIXED:
            assert resp.body == FIXED[req.path], (req.method, req.target, resp.body[:200])
            return
        if req.path == "/blob":
            assert resp.body == blob(BLOB), (req.target, len(resp.body))
            return
        doc: dict[str, Any] = json.loads(resp.body)
        assert (doc["method"], doc["target"]) == (req.method, req.target), \
            f"answer for {doc['method']} {doc['target']} came back for {req.method} {req.target}"
        assert doc["body_len"] == len(req.body) and doc["body_head"] == req.body[:64].decode("latin-1"), doc
        sent = [v for k, v in doc["headers"] if k == "fly-request-id"]
        assert sent == [rid], (sent, rid)


# -- one client connection -----------------------------------------------------------------------------------

class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, small_window: bool = False) -> Conn:
        if not small_window:
            return cls(*await asyncio.open_connection("127.0.0.1", port))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # a slow reader's small window
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        return cls(*await asyncio.open_connection(sock=sock))

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def eof(self) -> None:
        """The edge closes next: nothing more arrives."""
        async with asyncio.timeout(5):
            rest = await self.reader.read()
        assert rest == b"", f"bytes after a response that ended the connection: {rest[:200]!r}"

    def rst(self) -> None:
        sock = self.writer.get_extra_info("socket")
        if sock is None:  # the edge closed it already
            self.writer.close()
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    def close(self) -> None:
        self.writer.close()


def make_request(rng: random.Random, tag: str, *, method: str | None = None, path: str | None = None,
                 last: bool = False) -> Req:
    """`last`: nothing is written behind it on its connection before it is answered (see `ends`)."""
    method = method or rng.choices(["GET", "HEAD", "POST"], [70, 10, 20])[0]
    path = path or rng.choices(PATHS, PATH_WEIGHTS)[0]
    if method == "POST" and path in FIXED and not last:
        path = "/post"
    fields = dict(BROWSER) if rng.random() < 0.4 else {}
    if rng.random() < 0.1:
        fields["X-Chaos"] = tag
    body = b""
    if method == "POST":
        size = BIG if rng.random() < 0.25 else rng.randint(0, 100)
        body = bytes(rng.getrandbits(8) for _ in range(64)) * (size // 64) + b"z" * (size % 64)
    return Req(method, path, f"{path}?t={tag}", fields=fields, body=body)


def ends(req: Req, resp: Resp) -> bool:
    """The edge may close after this response without saying so: a machine that answered a POST without
    reading its body (the fixed-answer paths), or a failed POST, leaves the rest of the body unread at the
    edge, which then closes instead of skipping it (ServerConnection._finish, RFC 9112 §9.6). Such a request is
    the last one written on its connection."""
    return req.method == "POST" and (req.path in FIXED or resp.status != 200)


class Client:
    """One worker: sessions of a few random exchanges on one connection each, until `stop_at`."""

    def __init__(self, port: int, book: Book, seed: int, stop_at: float) -> None:
        self.port = port
        self.book = book
        self.rng = random.Random(seed)
        self.stop_at = stop_at
        self.name = f"w{seed}"
        self.n = 0
        self.trace: list[Any] = []  # the current session's actions and responses (for failure messages)

    def tag(self) -> str:
        self.n += 1
        return f"{self.name}.{self.n}"

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < self.stop_at:
            await self.session()

    async def exchange(self, conn: Conn, *reqs: Req) -> bool:
        """Read and check the responses to `reqs` (sent already); False: the connection ended after them."""
        for req in reqs:
            try:
                resp = await asyncio.wait_for(read_response(conn.reader, req.method), 10)
            except TimeoutError:
                raise AssertionError(f"{req.method} {req.target} {req.version} {req.fields}: no response in 10 s "
                                     f"after {self.trace}") from None
            except BrokenPipeError as exc:
                raise AssertionError(f"{req.method} {req.target} {req.raw!r}: {exc!r} after {self.trace}") from exc
            except (Truncated, ConnectionResetError) as exc:
                # A response cut short by the machine's reset (harness reset_after_head) once its head had
                # been forwarded: only a POST's (not replayable: not held back); a GET/HEAD is held and retried.
                assert req.method == "POST", f"{req.method} {req.target}: {exc}"
                self.book.truncated.append((req.method, req.target, str(exc)))
                return False
            self.trace.append((req.method, req.target, req.version, resp and resp.status, resp and resp.headers))
            self.book.check(req, resp)
            assert resp is not None
            if ends(req, resp):
                return False
            persistent = resp.header("connection") == "keep-alive" if req.version == "1.0" else \
                resp.header("connection") != "close"
            if req.raw or not persistent:
                if not resp.close_delimited:
                    try:
                        await conn.eof()
                    except TimeoutError:
                        raise AssertionError(f"no close after {self.trace}") from None
                return False
        return True

    async def session(self) -> None:
        rng, book = self.rng, self.book
        conn = await Conn.open(self.port, small_window=rng.random() < 0.1)
        self.trace = []
        try:
            for _ in range(rng.randint(1, 6)):
                action = rng.choices(
                    ["request", "pipelined", "behind", "split_head", "slow_reader", "http10", "malformed"],
                    [60, 8, 8, 6, 3, 4, 2])[0]
                book.actions[action] += 1
                self.trace.append(action)
                if action == "request":
                    req = make_request(rng, self.tag(), last=True)
                    if req.body and rng.random() < 0.5:  # head and body apart
                        wire = req.wire()
                        conn.send(wire[:len(wire) - len(req.body)])
                        await conn.writer.drain()
                        await asyncio.sleep(0.01)
                        conn.send(req.body)
                    else:
                        conn.send(req.wire())
                    reqs = [req]
                elif action == "pipelined":
                    reqs = [make_request(rng, self.tag(), method=rng.choice(["GET", "GET", "HEAD", "POST"]))
                            for _ in range(2)]
                    conn.send(reqs[0].wire() + reqs[1].wire())
                elif action == "behind":  # a second request written while the first is in flight
                    reqs = [make_request(rng, self.tag(), method="GET", path=rng.choice(["/delay", "/stream", "/"])),
                            make_request(rng, self.tag(), method=rng.choice(["GET", "GET", "POST"]))]
                    conn.send(reqs[0].wire())
                    await conn.writer.drain()
                    await asyncio.sleep(rng.uniform(0.0, 0.1))
                    conn.send(reqs[1].wire())
                elif action == "split_head":
                    req = make_request(rng, self.tag(), method=rng.choice(["GET", "GET", "HEAD"]))
                    wire = req.wire()
                    cut = rng.randint(1, len(wire) - 1)
                    conn.send(wire[:cut])
                    await conn.writer.drain()
                    await asyncio.sleep(rng.uniform(0.005, 0.03))
                    conn.send(wire[cut:])
                    reqs = [req]
                elif action == "slow_reader":
                    req = make_request(rng, self.tag(), method="GET", path="/blob")
                    req.target = f"/blob?n={BLOB}&t={req.target.partition('t=')[2]}"
                    conn.send(req.wire())
                    await asyncio.sleep(rng.uniform(0.05, 0.3))
                    reqs = [req]
                elif action == "http10":
                    req = make_request(rng, self.tag(), method=rng.choice(["GET", "HEAD"]))
                    req.version = "1.0"
                    conn.send(req.wire())
                    reqs = [req]
                else:
                    req = Req("GET", "", "", raw=rng.choice(MALFORMED))
                    conn.send(req.raw)
                    reqs = [req]
                if not await self.exchange(conn, *reqs):
                    return
            await self.leave(conn)
        finally:
            conn.close()

    async def leave(self, conn: Conn) -> None:
        rng = self.rng
        how = rng.choices(["close", "half_close", "rst", "gone"], [40, 20, 20, 20])[0]
        self.book.actions["leave_" + how] += 1
        if how == "close":
            return
        req = make_request(rng, self.tag(), method=rng.choice(["GET", "GET", "POST"]),
                           path=rng.choice(["/", "/delay", "/stream", "/split", "/x"]), last=True)
        conn.send(req.wire())
        if how == "half_close":
            await conn.writer.drain()
            if rng.random() < 0.5:
                await asyncio.sleep(rng.uniform(0.0, 0.05))
            conn.writer.write_eof()
            if await self.exchange(conn, req):
                await conn.eof()  # after a half-close the edge answers what is in flight, then closes
        elif how == "rst":
            await conn.writer.drain()
            await asyncio.sleep(rng.uniform(0.0, 0.15))
            conn.rst()
        # "gone": closed right after sending (the caller's conn.close())


async def chaos(lab: Lab, rng: random.Random, stop_at: float) -> Counter[str]:
    """Machines misbehaving now and then: fly-replay for a while, dropped connections, resets mid-response."""
    loop = asyncio.get_running_loop()
    done: Counter[str] = Counter()
    gru1 = lab.backends["gru1"]
    try:
        while loop.time() < stop_at:
            await asyncio.sleep(rng.uniform(0.1, 0.3))
            what = rng.choice(["replay", "fail", "reset", "calm"])
            done[what] += 1
            if what == "replay":  # gru1 sends everything to sjc1 for a while
                gru1.replay = "region=sjc"
                await asyncio.sleep(rng.uniform(0.1, 0.4))
                gru1.replay = ""
            elif what == "fail":
                lab.backends[rng.choice(FAULTY)].fail_next = rng.randint(1, 2)
            elif what == "reset":
                lab.backends[rng.choice(FAULTY)].reset_after_head = 1
    finally:
        for backend in lab.backends.values():
            backend.replay = ""
            backend.fail_next = backend.reset_after_head = 0
    return done


async def until(check: Callable[[], bool], timeout: float = 2.0) -> bool:
    """Poll `check` until true or `timeout` (what is in flight settles)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def pool_problems(proxy: EdgeProxy) -> list[str]:
    """The upstream pool once quiet: every open connection idle (open count == idle count, within the bound),
    every idle one open, reusable and free of a sink or a lane flight."""
    pool = proxy.pool
    problems = []
    for key in set(pool._open) | set(pool._idle):
        idle = pool._idle.get(key, ())
        opened = pool.open_count(key)
        if opened > POOL_MAX:
            problems.append(f"{key}: {opened} open > {POOL_MAX}")
        if opened != len(idle):
            problems.append(f"{key}: {opened} open, {len(idle)} idle")
        for up in idle:
            if up.closed or not up.reusable or up.sink is not None or up.lane is not None or up.pool is not pool:
                problems.append(f"{key}: idle {up!r} closed={up.closed} reusable={up.reusable} "
                                f"sink={up.sink!r} lane={up.lane!r}")
    return problems


def connection_problems(proxy: EdgeProxy) -> list[str]:
    """Client connections once quiet: nothing in flight, on the lane or waiting for a first byte."""
    problems = []
    for conn in proxy.connections:
        if conn.flight is not None or conn._current is not None or conn._pending or conn.first_byte_at \
                or conn.first_byte_late is not None:
            problems.append(f"{conn.peer}: flight={conn.flight!r} current={conn._current!r} "
                            f"pending={len(conn._pending)} first_byte_at={conn.first_byte_at}")
    return problems


async def run_chaos(tmp: Path, seed: int, caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
    config: dict[str, Any] = {"first_byte_timeout": 1.0, "passive_down": 0.3, "pool_max_per_machine": POOL_MAX,
                              "metrics_listen": ""}
    async with edge_lab(tmp, MACHINES, **config) as lab:
        proxy = lab.service.proxy
        assert (await request(lab.port)).status == 200  # a pooled connection for the lane to start with
        lane = count_lane(proxy)
        fast = count_fast(proxy)
        book = Book()
        stop_at = loop.time() + RUN_FOR
        rng = random.Random(seed)
        clients = [Client(lab.port, book, rng.getrandbits(32), stop_at) for _ in range(WORKERS)]
        faults, *_ = await asyncio.gather(chaos(lab, random.Random(seed + 1), stop_at),
                                          *(c.run() for c in clients))
        assert faults is not None

        # Three keep-alive clients stay connected through the quiet checks, each after a lane request: the lane
        # still works after all that (once gru1's last passive mark-down is over and the pool holds a connection).
        await asyncio.sleep(0.4)
        assert (await request(lab.port)).status == 200
        parked = [await Conn.open(lab.port) for _ in range(3)]
        for i, conn in enumerate(parked):
            req = Req("GET", "/parked", f"/parked?i={i}")
            conn.send(req.wire())
            assert await Client(lab.port, book, 0, 0).exchange(conn, req)
        assert lane[-3:] == [True] * 3, lane[-3:]

        def quiet() -> bool:
            return (not proxy.load.requests and len(proxy.connections) == len(parked)
                    and not pool_problems(proxy) and not connection_problems(proxy))

        settled = await until(quiet)
        # 1. Nothing counted in flight, and the server side of every closed client gone.
        assert proxy.load.requests == {}, proxy.load.requests
        assert len(proxy.connections) == len(parked), [c.peer for c in proxy.connections]
        # 2. and 4. The pool and the connections hold no leftover exchange.
        assert pool_problems(proxy) == []
        assert connection_problems(proxy) == []
        assert settled  # all of the above at the same moment
        for conn in parked:
            conn.close()
        await until(lambda: not proxy.connections and not proxy.load.connections)
        assert not proxy.connections, [(c.peer, c.closed, c.idle) for c in proxy.connections]
        assert proxy.load.connections == {} and proxy.load.requests == {}, proxy.load.__dict__

        # 6. The mix went through all three paths, the lane for a good share.
        lane_n, fast_n, general_n = sum(lane), sum(fast), fast.count(False)
        total = lane_n + fast_n + general_n
        shares = f"lane {lane_n}, fast {fast_n}, general {general_n}; {book.actions}; faults {faults}"
        assert lane_n > 0.2 * total and fast_n > 0 and general_n > 0, shares
        assert book.checked > 300 and sum(faults.values()) > 5, (book.checked, shares)
        print(f"seed {seed}: {book.checked} responses checked, {dict(book.statuses)} {dict(book.errors)}, "
              f"{len(book.truncated)} truncated; {shares}")
        # 3. (checked as the clients read): the 200s dominate.
        assert book.statuses[200] > 0.8 * book.checked, (book.statuses, book.errors, shares)

    # 5. Nothing logged above INFO by the edge (a WARNING there is a metrics port or a dying worker: neither
    # applies in-process with metrics off), no handler failure, no unhandled task exception.
    gc.collect()  # a task that failed unobserved reports when collected
    await asyncio.sleep(0)
    bad = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith(("edge_proxy", "asyncio"))]
    assert bad == [], [(r.name, r.getMessage(), r.exc_text) for r in bad]
    assert loop_errors == [], loop_errors


@aio
@pytest.mark.parametrize("seed", SEEDS)
async def test_chaos(tmp_path: Path, seed: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="edge_proxy")
    await run_chaos(tmp_path, seed, caplog)


# -- what the chaos run found, reduced (a regression test once fixed, an xfail until then) ---------------------

@aio
async def test_pipelined_request_behind_a_response_with_trailing_bytes(tmp_path: Path) -> None:
    async with edge_lab(tmp_path, {"gru1": ("web", "gru")}, metrics_listen="") as lab:
        assert (await request(lab.port)).status == 200  # a pooled connection: both requests go the fast path
        conn = await Conn.open(lab.port)
        try:
            first = Req("GET", "/garbage", "/garbage")
            second = Req("GET", "/second", "/second")
            conn.send(first.wire() + second.wire())  # one read at the edge: the second waits behind the first
            book = Book()
            book.check(first, await read_response(conn.reader, "GET"))
            # Found by the chaos run (fixed in def5713): /second went out on the upstream connection released
            # from the parser callback while its read still held "HTTP/1.1 200 OK\r\n\r\n", which then parsed as
            # /second's response (close-delimited, held back as a GET's) with the machine's real answer as its body.
            async with asyncio.timeout(2):
                book.check(second, await read_response(conn.reader, "GET"))
        finally:
            conn.close()


@aio
async def test_request_of_a_reset_client_forwarded_later_leaks_its_connection_count(tmp_path: Path) -> None:
    config = {"app": "web", "http_service": {"internal_port": 8080, "concurrency": {
        "type": "connections", "soft_limit": 1, "hard_limit": 1}}}
    async with edge_lab(tmp_path, {"gru1": ("web", "gru")}, app_config=config, metrics_listen="") as lab:
        proxy = lab.service.proxy
        assert (await request(lab.port)).status == 200
        first = await Conn.open(lab.port)
        first.send(Req("GET", "/delay", "/delay").wire())
        await asyncio.sleep(0.1)  # in flight: its connection is the machine's one (hard limit 1)
        second = await Conn.open(lab.port)
        second.send(Req("GET", "/queued", "/queued").wire())  # queued until the first connection goes
        await second.writer.drain()
        await asyncio.sleep(0.05)
        second.rst()  # gone while queued
        Book().check(Req("GET", "/delay", "/delay"), await read_response(first.reader, "GET"))
        first.close()  # capacity: the queued request goes on, for nobody
        await until(lambda: not proxy.connections and not proxy.load.connections and not proxy.load.requests)
        assert not proxy.connections and proxy.load.requests == {}
        # Today: {gru1: 1}, for good; at hard limit 1 the machine takes no other connection again.
        assert proxy.load.connections == {}, proxy.load.connections
