"""Pure core: config, globs, classification order, cookie format/parse, mount file formats."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from litefs_proxy.classify import (
    Kind,
    RegionAction,
    Route,
    WriteAction,
    classify,
    decide_region,
    decide_write,
    forward_address,
    health_ok,
    parse_window,
    read_wait,
    request_path,
)
from litefs_proxy.config import Endpoint, ProxyConfig, load_config, parse_config, parse_go_duration
from litefs_proxy.cookie import cookie_value, format_txid, http_date, parse_txid, request_txid, set_cookie
from litefs_proxy.errors import ConfigError, MountError
from litefs_proxy.globs import compile_glob
from litefs_proxy.mountfiles import (
    NO_PRIMARY_LAG_MS,
    Pos,
    format_lag,
    format_pos,
    format_primary,
    parse_lag,
    parse_pos,
    parse_primary,
    read_lag,
    read_pos,
    read_role,
    role_of,
    write_atomic,
)

BASE = "fuse:\n  dir: /litefs\nproxy:\n  addr: ':8080'\n  target: 'localhost:8081'\n  db: 'db'\n"


def proxy_of(text: str, **kw: Any) -> ProxyConfig:
    p = parse_config(text, **kw).proxy
    assert p is not None
    return p


def cfg(**kw: Any) -> ProxyConfig:
    base = ProxyConfig(addr=Endpoint("", 0), target=Endpoint("127.0.0.1", 1), db="db")
    return dataclasses.replace(base, **kw)


# -- config ------------------------------------------------------------------------------------------------

def test_config_defaults_match_litefs() -> None:
    c = parse_config(BASE)
    p = c.proxy
    assert p is not None
    assert p.addr == Endpoint("", 8080) and p.target == Endpoint("localhost", 8081) and p.db == "db"
    assert (p.max_lag, p.primary_redirect_timeout) == (10.0, 5.0)
    assert (p.read_timeout, p.read_header_timeout, p.write_timeout, p.idle_timeout) == (0.0, 10.0, 0.0, 30.0)
    assert p.passthrough == () and p.always_forward == () and p.mode == "replay"
    assert c.mount == Path("/litefs") and c.replicator is None


def test_config_full_yaml_and_litefs_sections_accepted() -> None:
    text = BASE + (
        "  passthrough: ['*.png', '/static/*']\n  always-forward: ['/admin/*']\n  max-lag: 0\n"
        "  primary-redirect-timeout: 1m30s\n  read-timeout: 250ms\n  debug: true\n"
        "data:\n  dir: /var/lib/litefs\nlease:\n  type: consul\nexec:\n  - cmd: app\nexit-on-error: false\n"
    )
    p = proxy_of(text)
    assert [g.pattern for g in p.passthrough] == ["*.png", "/static/*"]
    assert [g.pattern for g in p.always_forward] == ["/admin/*"]
    assert p.max_lag == 0.0 and p.primary_redirect_timeout == 90.0 and p.read_timeout == 0.25 and p.debug


def test_config_toml(tmp_path: Path) -> None:
    path = tmp_path / "litefs.toml"
    path.write_text('[proxy]\naddr = ":9"\ntarget = "h:1"\ndb = "x.db"\nmax-lag = "2s"\n[fuse]\ndir = "/m"\n')
    c = load_config(path)
    assert c.proxy is not None and c.proxy.addr.port == 9 and c.proxy.max_lag == 2.0 and c.mount == Path("/m")


def test_config_no_expand_env() -> None:
    p = proxy_of(BASE.replace("'db'", "'$DBNAME'"), env={"DBNAME": "app.db"}, expand=False)
    assert p.db == "$DBNAME"  # LiteFS's -no-expand-env


def test_config_env_expansion() -> None:
    assert proxy_of(BASE.replace("'db'", "'${DBNAME}'"), env={"DBNAME": "app.db"}).db == "app.db"
    assert proxy_of(BASE.replace("'db'", "'$DBNAME'"), env={"DBNAME": "app.db"}).db == "app.db"


@pytest.mark.parametrize(("text", "key"), [
    (BASE + "  bogus: 1\n", "proxy.bogus"),
    (BASE + "nonsense:\n  a: 1\n", "nonsense"),
    (BASE.replace("  addr: ':8080'\n", ""), "proxy.addr"),
    (BASE.replace("  target: 'localhost:8081'\n", "") + "  bogus: 1\n", "proxy.bogus"),  # skipped, still checked
    (BASE.replace("  db: 'db'\n", ""), "proxy.db"),
    (BASE + "  max-lag: ten\n", "proxy.max-lag"),
    (BASE + "  max-lag: -1s\n", "proxy.max-lag"),
    (BASE + "  passthrough: '*.png'\n", "proxy.passthrough"),
    (BASE + "  mode: sideways\n", "proxy.mode"),
    (BASE + "  debug: yes please\n", "proxy.debug"),
    (BASE.replace("':8080'", "'8080'"), "proxy.addr"),
    (BASE.replace("fuse:\n  dir: /litefs\n", ""), "fuse.dir"),
    (BASE + "replicator:\n  role: primary\n", "replicator.addr"),
    (BASE + "replicator:\n  role: replica\n", "replicator.primary-url"),
    (BASE + "replicator:\n  role: boss\n", "replicator.role"),
    (BASE + "replicator:\n  role: primary\n  addr: ':1'\n  extra: 1\n", "replicator.extra"),
    (BASE + "  forward-target: 'x:1'\n", "proxy.forward-target"),
])
def test_config_errors_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert str(info.value).startswith(key + ":")


def test_config_not_yaml_or_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config("proxy: [\n")
    assert parse_config("fuse:\n  dir: /x\n").proxy is None  # no proxy.target: skipped, as LiteFS does
    with pytest.raises(ConfigError, match="No such file"):
        load_config(tmp_path / "absent.yml")


def test_primary_region_mode_needs_regions() -> None:
    text = "proxy:\n  addr: ':1'\n  target: 'h:2'\n  mode: primary-region\n"
    with pytest.raises(ConfigError, match=r"proxy\.primary-region"):
        parse_config(text)
    p = proxy_of(text, env={"PRIMARY_REGION": "gru", "FLY_REGION": "sjc"})
    assert (p.primary_region, p.region, p.db) == ("gru", "sjc", "")


@pytest.mark.parametrize(("value", "seconds"), [
    ("10s", 10.0), ("1m30s", 90.0), ("250ms", 0.25), ("1h", 3600.0), ("0", 0.0), (0, 0.0), ("1.5s", 1.5),
    ("100us", 0.0001), (3, 3.0),
])
def test_go_durations(value: object, seconds: float) -> None:
    assert parse_go_duration(value, "k") == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "10", "s", "10 s", "1x", True, None, [1], "10s5"])
def test_go_durations_refused(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^k:"):
        parse_go_duration(value, "k")


# -- globs -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("pattern", "path", "hit"), [
    ("/build/*", "/build/", True), ("/build/*", "/build/a/b", True), ("/build/*", "/build", False),
    ("*.png", "/images/pic.png", True), ("*.png", "/images/pic.png.txt", False), ("/a", "/a", True),
    ("/a", "/a/", False), ("/a", "/ab", False), ("/x?y", "/x?y", True), ("/x?y", "/xzy", False),
    ("/a.b", "/aXb", False), ("/[ab]", "/a", False), ("/[ab]", "/[ab]", True), ("*", "/anything/at/all", True),
    ("/a/*/c", "/a/b/x/c", True), ("/a/*/c", "/a/c", False),
])
def test_glob(pattern: str, path: str, hit: bool) -> None:
    assert compile_glob(pattern).match(path) is hit


# -- classification ----------------------------------------------------------------------------------------

def test_request_path_strips_query_and_decodes() -> None:
    assert request_path("/a%20b?x=1#f") == "/a b"
    assert request_path("http://h:1/p?q") == "/p"
    assert request_path("http://h") == "/"


@pytest.mark.parametrize(("method", "kind", "cookie"), [
    ("GET", Kind.READ, False), ("HEAD", Kind.READ, False), ("POST", Kind.WRITE, True),
    ("PUT", Kind.WRITE, True), ("DELETE", Kind.WRITE, True), ("PATCH", Kind.WRITE, True),
    ("OPTIONS", Kind.WRITE, True), ("TRACE", Kind.WRITE, True),
])
def test_methods(method: str, kind: Kind, cookie: bool) -> None:
    assert classify(method, "/x", cfg()) == Route(kind, cookie)


def test_passthrough_wins_over_health_and_writes() -> None:
    c = cfg(passthrough=(compile_glob("/litefs/*"), compile_glob("/static/*")),
            always_forward=(compile_glob("/static/*"),))
    assert classify("GET", "/litefs/health", c).kind is Kind.PASSTHROUGH
    assert classify("POST", "/static/x?y", c).kind is Kind.PASSTHROUGH
    assert classify("GET", "/static/x", c).kind is Kind.PASSTHROUGH


def test_health_only_for_get() -> None:
    assert classify("GET", "/litefs/health", cfg()).kind is Kind.HEALTH
    assert classify("GET", "/litefs/health?x=1", cfg()).kind is Kind.HEALTH
    assert classify("HEAD", "/litefs/health", cfg()).kind is Kind.READ
    assert classify("POST", "/litefs/health", cfg()).kind is Kind.WRITE


def test_always_forward_makes_get_a_write_without_cookie() -> None:
    c = cfg(always_forward=(compile_glob("/admin/*"),))
    assert classify("GET", "/admin/x", c) == Route(Kind.WRITE, cookie=False)
    assert classify("HEAD", "/admin/x", c) == Route(Kind.WRITE, cookie=False)
    assert classify("POST", "/admin/x", c) == Route(Kind.WRITE, cookie=True)
    assert classify("GET", "/admin", c) == Route(Kind.READ)


def test_decide_write() -> None:
    assert decide_write("primary", "replay") is WriteAction.LOCAL
    assert decide_write("primary", "forward") is WriteAction.LOCAL
    assert decide_write("replica", "replay") is WriteAction.REPLAY
    assert decide_write("replica", "forward") is WriteAction.FORWARD
    assert decide_write("unknown", "replay") is WriteAction.WAIT


def test_read_wait() -> None:
    assert read_wait(0, Pos(5, 0)) == 0  # no cookie
    assert read_wait(9, None) == 0  # database missing: forward at once
    assert read_wait(5, Pos(5, 0)) == 0 and read_wait(4, Pos(5, 0)) == 0
    assert read_wait(6, Pos(5, 0)) == 6


def test_health() -> None:
    assert health_ok(10_000, 10.0) and not health_ok(10_001, 10.0)
    assert health_ok(NO_PRIMARY_LAG_MS, 0.0)  # max-lag 0 disables
    assert health_ok(None, 10.0)


def test_forward_address() -> None:
    assert forward_address("{primary}.vm.app.internal:{port}", "m1", 8080) == "m1.vm.app.internal:8080"


def test_primary_region_decisions() -> None:
    w, r = Route(Kind.WRITE, True), Route(Kind.READ)
    assert decide_region(w, "sjc", "gru", replayed=False, window_until=0, now=1) is RegionAction.REPLAY_REGION
    assert decide_region(w, "gru", "gru", replayed=False, window_until=0, now=1) is RegionAction.LOCAL
    assert decide_region(w, "gru", "gru", replayed=True, window_until=0, now=1) is RegionAction.LOCAL_WITH_WINDOW
    assert decide_region(r, "sjc", "gru", replayed=False, window_until=10, now=1) is RegionAction.REPLAY_REGION
    assert decide_region(r, "sjc", "gru", replayed=False, window_until=10, now=11) is RegionAction.LOCAL
    assert decide_region(r, "gru", "gru", replayed=False, window_until=10, now=1) is RegionAction.LOCAL
    assert decide_region(Route(Kind.HEALTH), "sjc", "gru", replayed=False, window_until=0, now=1) \
        is RegionAction.LOCAL
    assert parse_window("123") == 123.0 and parse_window("x") == 0.0 and parse_window(None) == 0.0


# -- cookie ------------------------------------------------------------------------------------------------

def test_set_cookie_is_byte_for_byte_litefs() -> None:
    # 2026-11-26T04:30:00Z + 5 minutes; Go's http.SetCookie order: Path, Expires, HttpOnly.
    now = 1795667400.7
    assert http_date(now) == "Thu, 26 Nov 2026 04:30:00 GMT"
    assert set_cookie(0x2A, now) == "__txid=000000000000002a; Path=/; Expires=Thu, 26 Nov 2026 04:35:00 GMT; HttpOnly"


@pytest.mark.parametrize(("value", "txid"), [
    ("000000000000002a", 42), ("000000000000002A", 42), ("ffffffffffffffff", 2**64 - 1),
    ("0000000000000000", None), ("2a", None), ("000000000000002a0", None), ("0x0000000000002a", None),
    ("+00000000000002a", None), ("0000_00000000002a", None), ("00000000000000zz", None), ("", None),
])
def test_parse_txid(value: str, txid: int | None) -> None:
    assert (parse_txid(value) or None) == txid


def test_request_txid_ignores_invalid_short_and_zero() -> None:
    assert request_txid([]) == 0
    assert request_txid(["a=b; __txid=000000000000002a"]) == 42
    assert request_txid(["__txid=\"000000000000002a\""]) == 42
    assert request_txid(["__txid=2a"]) == 0  # short
    assert request_txid(["__txid=0000000000000000"]) == 0  # zero
    assert request_txid(["__txid=zzzzzzzzzzzzzzzz"]) == 0  # invalid
    assert request_txid(["x=1", "__txid=0000000000000007"]) == 7  # several Cookie headers
    assert request_txid(["__txid=00000000000000a\\"]) == 0  # bad cookie byte: skipped like Go
    assert cookie_value(["__txid=bad\\", "__txid=0000000000000009"]) == "0000000000000009"
    assert format_txid(1) == "0000000000000001"


# -- mount files -------------------------------------------------------------------------------------------

def test_mount_formats_round_trip() -> None:
    pos = Pos(0x10, 0xDEADBEEF)
    assert format_pos(pos) == "0000000000000010/00000000deadbeef\n" and len(format_pos(pos)) == 34
    assert parse_pos(format_pos(pos)) == pos
    # Go's %+010d counts the sign in the width: 11 bytes with the newline (LiteFS's lagSize).
    assert format_lag(0) == "+000000000\n" and format_lag(1234) == "+000001234\n"
    assert format_lag(NO_PRIMARY_LAG_MS) == "+2147483647\n" and len(format_lag(5)) == 11
    assert parse_lag("+000001234\n") == 1234 and parse_lag("+0000000000") == 0 and parse_lag("-0000000005") == -5
    assert format_primary("m1") == "m1\n" and parse_primary("m1\n") == "m1"


@pytest.mark.parametrize(("fn", "text"), [
    (parse_pos, "10/20\n"), (parse_pos, "0000000000000010\n"), (parse_pos, "000000000000001G/0000000000000000"),
    (parse_lag, "12"), (parse_lag, "+12"), (parse_lag, "abc"), (parse_primary, "\n"), (parse_primary, "a b\n"),
])
def test_mount_formats_refused(fn: object, text: str) -> None:
    with pytest.raises(MountError):
        fn(text)  # type: ignore[operator]


def test_roles() -> None:
    assert role_of("m1", None) == "replica"
    assert role_of(None, 0) == "primary" and role_of(None, None) == "primary"
    assert role_of(None, NO_PRIMARY_LAG_MS) == "unknown"


def test_read_mount_files(tmp_path: Path) -> None:
    assert read_pos(tmp_path, "db") is None and read_lag(tmp_path) is None
    write_atomic(tmp_path / "db-pos", format_pos(Pos(3, 4)))
    write_atomic(tmp_path / ".lag", format_lag(NO_PRIMARY_LAG_MS))
    assert read_pos(tmp_path, "db") == Pos(3, 4)
    assert read_role(tmp_path) == ("unknown", None)
    write_atomic(tmp_path / ".primary", "m9\n")
    assert read_role(tmp_path) == ("replica", "m9")
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []


# -- LiteFS /events lines ----------------------------------------------------------------------------------

def test_parse_litefs_events() -> None:
    from litefs_proxy.events import Event, parse_event, primary_event, tx_event

    assert parse_event(b'{"type":"init","data":{"isPrimary":true,"hostname":"node-1"}}\n') == \
        Event("init", is_primary=True, hostname="node-1")
    tx = b'{"type":"tx","db":"db","data":{"txID":"0000000000000027","postApplyChecksum":"83b05248774ce767"}}'
    assert parse_event(tx) == Event("tx", db="db", txid=0x27)
    assert parse_event(b'{"type":"primaryChange","data":{"isPrimary":false,"hostname":"node-2"}}') == \
        Event("primaryChange", is_primary=False, hostname="node-2")
    for bad in (b"", b"beep boop", b"[]", b'{"data":{}}', b'{"type":1}'):
        assert parse_event(bad) is None
    assert parse_event(b'{"type":"tx","data":{"txID":"zz"}}') == Event("tx")
    assert parse_event(tx_event("db", 5, 6)) == Event("tx", db="db", txid=5)
    assert parse_event(primary_event("init", False, "m1")) == Event("init", is_primary=False, hostname="m1")


def test_config_litefs_url() -> None:
    p = proxy_of(BASE + "  litefs-url: http://localhost:20202/\n")
    assert (p.litefs_url, p.litefs_url_auto) == ("http://localhost:20202", False)
