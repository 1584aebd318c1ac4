"""The proxy's config: LiteFS's `proxy` section (YAML or TOML), plus sixpn's extensions, as frozen dataclasses.

A real `litefs.yml` loads unchanged: its other top-level sections (`fuse`, `data`, `lease`, `exec`...) are
accepted, `fuse.dir` gives the mount, `http.addr` LiteFS's API, and the whole text is expanded from the
environment before parsing as LiteFS does (`expand_env`: Go's `os.Expand` plus LiteFS's `${A == "x"}`
expressions). Unknown keys inside `proxy` (and unknown top-level sections) are refused with the key's path. A
config without `proxy.target` has no proxy (`Config.proxy` is None), as LiteFS skips its proxy then.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from litefs_proxy.errors import ConfigError
from litefs_proxy.globs import Glob, compile_glob

Mode = Literal["replay", "forward", "primary-region"]
Role = Literal["primary", "replica"]

PROXY_KEYS = frozenset({
    "addr", "target", "db", "passthrough", "always-forward", "max-lag", "primary-redirect-timeout", "read-timeout",
    "read-header-timeout", "write-timeout", "idle-timeout", "debug", "mode", "forward-target", "txid-timeout",
    "cookie-expiry", "connect-retry", "poll-interval", "watch", "primary-region", "region", "rw-window", "litefs-url",
})
# Sections of a LiteFS config this proxy has no use for but must not choke on.
LITEFS_SECTIONS = frozenset({
    "data", "http", "lease", "exec", "log", "tracing", "backup", "exit-on-error", "skip-sync", "strict-verify",
    "static", "consul",
})
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# LiteFS's expressions inside ${...} (cmd/litefs/config.go:266-270); Go's RE2 \w and \s, spelled out.
_EXPR_SQ = re.compile(r"([0-9A-Za-z_]+)[\t\n\f\r ]*(==|!=)[\t\n\f\r ]*'(.*)'")
_EXPR_DQ = re.compile(r'([0-9A-Za-z_]+)[\t\n\f\r ]*(==|!=)[\t\n\f\r ]*"(.*)"')
_EXPR_VAR = re.compile(r"([0-9A-Za-z_]+)[\t\n\f\r ]*(==|!=)[\t\n\f\r ]*([0-9A-Za-z_]+)")
_SHELL_SPECIAL = frozenset("*#$@!?-0123456789")
_LITEFS_API_ADDR = ":20202"  # LiteFS's http.addr default (http/server.go:34)


@dataclass(frozen=True)
class Endpoint:
    host: str  # "" = every address (Go's ":8080")
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ProxyConfig:
    addr: Endpoint
    target: Endpoint
    db: str
    passthrough: tuple[Glob, ...] = ()
    always_forward: tuple[Glob, ...] = ()
    max_lag: float = 10.0
    primary_redirect_timeout: float = 5.0
    read_timeout: float = 0.0
    read_header_timeout: float = 10.0
    write_timeout: float = 0.0
    idle_timeout: float = 30.0
    debug: bool = False
    # sixpn extensions (LiteFS has these as constants or not at all)
    mode: Mode = "replay"
    forward_target: str = "{primary}:{port}"
    txid_timeout: float = 5.0
    cookie_expiry: float = 300.0
    connect_retry: float = 30.0
    poll_interval: float = 0.001  # LiteFS's PollTXIDInterval (http/proxy_server.go:24)
    watch: Literal["auto", "poll"] = "auto"
    primary_region: str = ""
    region: str = ""
    rw_window: float = 5.0
    litefs_url: str = ""  # LiteFS's HTTP API (e.g. http://localhost:20202): its /events wake waiters
    # litefs_url came from the config's `http.addr` (not `proxy.litefs-url`): used only where inotify is blind
    litefs_url_auto: bool = False


@dataclass(frozen=True)
class ReplicatorConfig:
    """sixpn's LiteFS stand-in (section `replicator`): who writes `.primary`, `<db>-pos` and `.lag`."""

    role: Role
    db: str = ""
    addr: Endpoint | None = None
    primary_url: str = ""
    hostname: str = ""
    lag_interval: float = 0.5


@dataclass(frozen=True)
class Config:
    proxy: ProxyConfig | None  # None: no `proxy.target`, the proxy is skipped (LiteFS: mount_linux.go:520-524)
    mount: Path | None = None
    replicator: ReplicatorConfig | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def parse_go_duration(value: object, key: str) -> float:
    """A Go `time.Duration` string (`"10s"`, `"1m30s"`, `"250ms"`, `"0"`) or a number of seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration like \"10s\", got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if text in ("0", "+0", "-0"):
            return 0.0
        parts = _GO_DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text.lstrip("+"):
            raise ConfigError(f"{key}: expected a duration like \"10s\" or \"500ms\", got {value!r}")
        seconds = sum(float(n) * _GO_UNITS[u] for n, u in parts)
    else:
        raise ConfigError(f"{key}: expected a duration like \"10s\", got {value!r}")
    if seconds < 0:
        raise ConfigError(f"{key}: duration must not be negative")
    return seconds


def parse_endpoint(value: object, key: str, *, default_host: str = "") -> Endpoint:
    """`:8080`, `localhost:8081`, `[::1]:80` (Go's host:port)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected host:port like \":8080\", got {value!r}")
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
    else:
        host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{key}: expected host:port like \":8080\", got {value!r}")
    return Endpoint(host or default_host, int(port))


def expand_env(text: str, env: Mapping[str, str]) -> str:
    """LiteFS's ExpandEnv (cmd/litefs/config.go:237-264): Go's `os.Expand` over the whole text, where each
    name, trimmed, may be `A == "x"`, `A != 'x'` or `A == B` (-> `true`/`false`), else an environment variable
    ("" when unset). `$NAME` and `${NAME}` both expand; `$$`, `$1`... are Go's special names (unset: "");
    `${}` and an unclosed `${` are eaten; a `$` followed by nothing name-like stays."""
    out: list[str] = []
    i = 0
    j = 0
    n = len(text)
    while j < n:
        if text[j] == "$" and j + 1 < n:
            out.append(text[i:j])
            name, width = _shell_name(text, j + 1)
            if name:
                out.append(_lookup(name, env))
            elif width == 0:
                out.append("$")
            j += width
            i = j + 1
        j += 1
    if not out:
        return text
    out.append(text[i:])
    return "".join(out)


def _shell_name(s: str, start: int) -> tuple[str, int]:
    """Go's os.getShellName: the name at s[start:] and how many bytes it took."""
    if s[start] == "{":
        if len(s) - start > 2 and s[start + 1] in _SHELL_SPECIAL and s[start + 2] == "}":
            return s[start + 1], 3
        close = s.find("}", start + 1)
        if close == -1:
            return "", 1  # bad syntax: eat "${"
        if close == start + 1:
            return "", 2  # bad syntax: eat "${}"
        return s[start + 1:close], close - start + 1
    if s[start] in _SHELL_SPECIAL:
        return s[start], 1
    k = start
    while k < len(s) and (s[k] == "_" or (s[k].isascii() and s[k].isalnum())):
        k += 1
    return s[start:k], k - start


def _lookup(name: str, env: Mapping[str, str]) -> str:
    name = name.strip()
    for expr, literal in ((_EXPR_SQ, True), (_EXPR_DQ, True), (_EXPR_VAR, False)):
        m = expr.fullmatch(name)
        if m is not None:
            left = env.get(m.group(1), "")
            right = m.group(3) if literal else env.get(m.group(3), "")
            return "true" if (left == right) == (m.group(2) == "==") else "false"
    return env.get(name, "")


def load_config(path: Path, env: Mapping[str, str] | None = None, *, expand: bool = True) -> Config:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from exc
    return parse_config(text, toml=path.suffix == ".toml", env=os.environ if env is None else env, name=str(path),
                        expand=expand)


def parse_config(text: str, *, toml: bool = False, env: Mapping[str, str] | None = None,
                 name: str = "config", expand: bool = True) -> Config:
    """`expand=False` is LiteFS's `-no-expand-env`."""
    env = {} if env is None else env
    if expand:
        text = expand_env(text, env)
    try:
        doc = tomllib.loads(text) if toml else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        kind = "TOML" if toml else "YAML"
        raise ConfigError(f"{name}: not valid {kind}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{name}: expected a mapping with a `proxy` section")
    for key in doc:
        if key not in ("proxy", "fuse", "replicator") and key not in LITEFS_SECTIONS:
            raise ConfigError(f"{key}: unknown section")
    api = _api_url(doc.get("http"))
    section = _Table(doc.get("proxy"), "proxy")
    proxy = None
    if section.data.get("target") or section.data.get("mode") == "primary-region":
        proxy = _proxy(section, env, api)
    else:
        section.used.update(PROXY_KEYS)
        section.done()  # skipped, but a misspelt key is still an error (LiteFS: yaml KnownFields)
    mount = _mount(doc.get("fuse"))
    replicator = None
    if "replicator" in doc:
        replicator = _replicator(_Table(doc["replicator"], "replicator"), env, proxy.db if proxy else "")
    if mount is None and (replicator is not None or (proxy is not None and proxy.mode != "primary-region")):
        raise ConfigError("fuse.dir: required (the LiteFS mount holding .primary and <db>-pos)")
    return Config(proxy=proxy, mount=mount, replicator=replicator)


def _api_url(http: object) -> str:
    """LiteFS's HTTP API from the `http` section (`addr`, default ":20202"), as a URL on this host."""
    addr: object = _LITEFS_API_ADDR
    if isinstance(http, dict) and http.get("addr"):
        addr = http["addr"]
    try:
        endpoint = parse_endpoint(addr, "http.addr")
    except ConfigError:
        return ""
    host = endpoint.host if endpoint.host not in ("", "0.0.0.0", "::") else "localhost"
    return f"http://{Endpoint(host, endpoint.port)}"


class _Table:
    """A section being read: remembers which keys were used, so the rest can be refused by name."""

    def __init__(self, value: object, path: str) -> None:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        self.data: dict[str, Any] = value
        self.path = path
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}"

    def get(self, name: str, default: Any = None) -> Any:
        self.used.add(name)
        return self.data.get(name, default)

    def required(self, name: str) -> Any:
        value = self.get(name)
        if value is None or value == "":
            raise ConfigError(f"{self.key(name)}: required")
        return value

    def string(self, name: str, default: str = "") -> str:
        value = self.get(name, default)
        if not isinstance(value, str):
            raise ConfigError(f"{self.key(name)}: expected a string, got {value!r}")
        return value

    def duration(self, name: str, default: float) -> float:
        value = self.get(name)
        return default if value is None else parse_go_duration(value, self.key(name))

    def globs(self, name: str) -> tuple[Glob, ...]:
        value = self.get(name, [])
        if value is None:
            value = []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self.key(name)}: expected a list of path globs, got {value!r}")
        return tuple(compile_glob(v) for v in value)

    def choice(self, name: str, options: tuple[str, ...], default: str) -> str:
        value = self.string(name, default)
        if value not in options:
            raise ConfigError(f"{self.key(name)}: expected one of {', '.join(options)}, got {value!r}")
        return value

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])}: unknown key")


def _proxy(t: _Table, env: Mapping[str, str], api: str) -> ProxyConfig:
    addr = parse_endpoint(t.required("addr"), t.key("addr"))
    target = parse_endpoint(t.required("target"), t.key("target"), default_host="localhost")
    mode = t.choice("mode", ("replay", "forward", "primary-region"), "replay")
    db = t.string("db")
    if not db and mode != "primary-region":
        raise ConfigError(f"{t.key('db')}: required")
    if "/" in db:
        raise ConfigError(f"{t.key('db')}: a database name inside the mount, not a path: {db!r}")
    debug = t.get("debug", False)
    if not isinstance(debug, bool):
        raise ConfigError(f"{t.key('debug')}: expected true or false, got {debug!r}")
    forward_target = t.string("forward-target", "{primary}:{port}")
    if "{primary}" not in forward_target:
        raise ConfigError(f"{t.key('forward-target')}: must contain {{primary}}, got {forward_target!r}")
    cfg = ProxyConfig(
        addr=addr, target=target, db=db,
        passthrough=t.globs("passthrough"), always_forward=t.globs("always-forward"),
        max_lag=t.duration("max-lag", 10.0),
        primary_redirect_timeout=t.duration("primary-redirect-timeout", 5.0),
        read_timeout=t.duration("read-timeout", 0.0),
        read_header_timeout=t.duration("read-header-timeout", 10.0),
        write_timeout=t.duration("write-timeout", 0.0),
        idle_timeout=t.duration("idle-timeout", 30.0),
        debug=debug,
        mode=mode,  # type: ignore[arg-type]
        forward_target=forward_target,
        txid_timeout=t.duration("txid-timeout", 5.0),
        cookie_expiry=t.duration("cookie-expiry", 300.0),
        connect_retry=t.duration("connect-retry", 30.0),
        poll_interval=t.duration("poll-interval", 0.1),
        watch=t.choice("watch", ("auto", "poll"), "auto"),  # type: ignore[arg-type]
        primary_region=t.string("primary-region", env.get("PRIMARY_REGION", "")),
        region=t.string("region", env.get("FLY_REGION", "")),
        rw_window=t.duration("rw-window", 5.0),
        litefs_url=t.string("litefs-url").rstrip("/") or api,
        litefs_url_auto=not t.string("litefs-url"),
    )
    t.done()
    if cfg.mode == "primary-region" and not (cfg.primary_region and cfg.region):
        raise ConfigError(f"{t.key('primary-region')}: primary-region mode needs primary-region and region "
                          "(or PRIMARY_REGION and FLY_REGION in the environment)")
    if cfg.poll_interval <= 0 and cfg.watch == "poll":
        raise ConfigError(f"{t.key('poll-interval')}: must be above 0 when watch is \"poll\"")
    return cfg


def _mount(fuse: object) -> Path | None:
    if fuse is None:
        return None
    if not isinstance(fuse, dict):
        raise ConfigError(f"fuse: expected a mapping, got {type(fuse).__name__}")
    value = fuse.get("dir")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"fuse.dir: expected a directory path, got {value!r}")
    return Path(value)


def default_hostname(env: Mapping[str, str]) -> str:
    """What LiteFS advertises as this node's hostname: on Fly, the machine id."""
    return env.get("FLY_MACHINE_ID") or env.get("HOSTNAME") or socket.gethostname()


def _replicator(t: _Table, env: Mapping[str, str], db: str) -> ReplicatorConfig:
    if not t.data.get("role"):
        raise ConfigError(f"{t.key('role')}: required (primary, replica or auto)")
    role = t.choice("role", ("primary", "replica", "auto"), "primary")
    if role == "auto":  # LiteFS's `candidate: ${FLY_REGION == PRIMARY_REGION}`, without the expression language
        if not env.get("PRIMARY_REGION") or not env.get("FLY_REGION"):
            raise ConfigError(f"{t.key('role')}: auto needs PRIMARY_REGION and FLY_REGION in the environment")
        role = "primary" if env["FLY_REGION"] == env["PRIMARY_REGION"] else "replica"
    addr_value = t.get("addr")
    addr = parse_endpoint(addr_value, t.key("addr")) if addr_value is not None else None
    primary_url = t.string("primary-url")
    if role == "replica" and not primary_url:
        raise ConfigError(f"{t.key('primary-url')}: required on a replica (e.g. http://primary:20202)")
    if role == "primary" and addr is None:
        raise ConfigError(f"{t.key('addr')}: required on the primary (e.g. \":20202\")")
    db = t.string("db", db)
    if not db or "/" in db:
        raise ConfigError(f"{t.key('db')}: required without a proxy (a database name inside the mount)")
    cfg = ReplicatorConfig(
        role=role,  # type: ignore[arg-type]
        db=db,
        addr=addr, primary_url=primary_url.rstrip("/"),
        hostname=t.string("hostname") or default_hostname(env),
        lag_interval=t.duration("lag-interval", 0.5),
    )
    t.done()
    return cfg
