"""The fly.toml-shaped app service config (spec edge-proxy.md), loaded into frozen dataclasses.

Unknown keys and impossible values are refused with the key's path in the message, e.g.
`http_service.concurrency.soft_limit: 30 is above hard_limit 25`.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from catalog.errors import ConfigError

ConcurrencyType = Literal["connections", "requests"]
RestartKind = Literal["always", "on-failure", "no"]
#: Fly's spellings: "on-fail" is flyctl's name for the Machines API's "on-failure"; "never" is accepted for "no".
_RESTART_ALIASES: dict[str, RestartKind] = {
    "always": "always", "on-failure": "on-failure", "on-fail": "on-failure", "no": "no", "never": "no",
}
#: Fly's default when a machine's config has no restart policy: "on-fail (or on-failure for the Machines API) is the
#: default when there's no explicit restart policy in a Machine's config, such as Machines created by fly launch and
#: fly deploy"; on-fail "tries up to 10 times to automatically restart the Machine if it exits with a non-zero exit
#: code, before letting it stop" (https://fly.io/docs/machines/guides-examples/machine-restart-policy/).
DEFAULT_RESTART_RETRIES = 10
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object, path: str) -> float:
    """`"10s"`, `"500ms"`, `"1m"` (or a bare number of seconds) to seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"{path}: expected a duration like \"10s\", got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ConfigError(f"{path}: expected a duration like \"10s\" or \"500ms\", got {value!r}")
    if seconds < 0:
        raise ConfigError(f"{path}: duration must not be negative")
    return seconds


@dataclass(frozen=True)
class Concurrency:
    type: ConcurrencyType = "connections"
    soft_limit: int = 20
    hard_limit: int | None = None


@dataclass(frozen=True)
class HttpCheck:
    interval: float = 15.0
    timeout: float = 2.0
    grace_period: float = 0.0
    method: str = "GET"
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TcpCheck:
    interval: float = 15.0
    timeout: float = 2.0
    grace_period: float = 0.0


@dataclass(frozen=True)
class RestartPolicy:
    """One `[[restart]]` entry: what the host agent does when a machine's main process exits."""

    policy: RestartKind = "on-failure"
    retries: int = DEFAULT_RESTART_RETRIES  # restarts allowed by "on-failure" before the machine is left stopped
    processes: tuple[str, ...] = ()  # the process groups it applies to; empty: every group


DEFAULT_RESTART = RestartPolicy()


@dataclass(frozen=True)
class Service:
    """One service of the app: `[http_service]`, or an entry of `[[services]]`."""

    internal_port: int
    protocol: str = "tcp"
    ports: tuple[int, ...] = ()
    handlers: tuple[str, ...] = ("http",)
    force_https: bool = False
    idle_timeout: float = 60.0
    processes: tuple[str, ...] = ()
    concurrency: Concurrency = Concurrency()
    http_checks: tuple[HttpCheck, ...] = ()
    tcp_checks: tuple[TcpCheck, ...] = ()


@dataclass(frozen=True)
class AppConfig:
    app: str = ""
    primary_region: str = ""
    hostnames: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    processes: tuple[tuple[str, str], ...] = ()
    services: tuple[Service, ...] = ()
    restarts: tuple[RestartPolicy, ...] = ()
    #: The TOML document it came from, kept so the catalog can store and reload it unchanged.
    doc: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def http_service(self) -> Service | None:
        """The first service with an http handler: the one the edge proxy routes to."""
        return next((s for s in self.services if "http" in s.handlers), None)

    def command_for(self, group: str) -> str | None:
        return dict(self.processes).get(group)

    def restart_for(self, group: str) -> RestartPolicy:
        """The `[[restart]]` entry naming `group`, else one naming no group, else Fly's default."""
        named = next((r for r in self.restarts if group in r.processes), None)
        return named or next((r for r in self.restarts if not r.processes), DEFAULT_RESTART)


class _Table:
    """A TOML table being read: every key taken is ticked off, leftovers are errors."""

    def __init__(self, raw: object, path: str) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(f"{path or 'config'}: expected a table, got {type(raw).__name__}")
        self.raw: dict[str, Any] = raw
        self.path = path
        self.taken: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, default: Any = None) -> Any:
        self.taken.add(name)
        return self.raw.get(name, default)

    def str_(self, name: str, default: str = "") -> str:
        value = self.get(name, default)
        if not isinstance(value, str):
            raise ConfigError(f"{self.key(name)}: expected a string, got {value!r}")
        return value

    def bool_(self, name: str, default: bool = False) -> bool:
        value = self.get(name, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.key(name)}: expected true or false, got {value!r}")
        return value

    def int_(self, name: str, default: int | None, low: int, high: int) -> int | None:
        value = self.get(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self.key(name)}: expected an integer, got {value!r}")
        if not low <= value <= high:
            raise ConfigError(f"{self.key(name)}: {value} is outside {low}..{high}")
        return value

    def port(self, name: str, required: bool = True) -> int | None:
        if required and name not in self.raw:
            raise ConfigError(f"{self.key(name)}: required")
        return self.int_(name, None, 1, 65535)

    def duration(self, name: str, default: float) -> float:
        value = self.get(name)
        return default if value is None else parse_duration(value, self.key(name))

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self.key(name)}: expected a list of strings, got {value!r}")
        return tuple(value)

    def tables(self, name: str) -> list[_Table]:
        value = self.get(name, [])
        if not isinstance(value, list):
            raise ConfigError(f"{self.key(name)}: expected an array of tables")
        return [_Table(item, f"{self.key(name)}[{i}]") for i, item in enumerate(value)]

    def table(self, name: str) -> _Table | None:
        value = self.get(name)
        return None if value is None else _Table(value, self.key(name))

    def string_map(self, name: str) -> tuple[tuple[str, str], ...]:
        sub = self.table(name)
        if sub is None:
            return ()
        pairs = []
        for key, value in sub.raw.items():
            if not isinstance(value, str):
                raise ConfigError(f"{sub.key(key)}: expected a string, got {value!r}")
            pairs.append((key, value))
        return tuple(pairs)

    def done(self) -> None:
        unknown = sorted(set(self.raw) - self.taken)
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])}: unknown key")


def _concurrency(table: _Table | None) -> Concurrency:
    if table is None:
        return Concurrency()
    kind = table.str_("type", "connections")
    if kind not in ("connections", "requests"):
        raise ConfigError(f"{table.key('type')}: must be \"connections\" or \"requests\", got {kind!r}")
    soft = table.int_("soft_limit", 20, 1, 1_000_000)
    hard = table.int_("hard_limit", None, 1, 1_000_000)
    assert soft is not None
    if hard is not None and soft > hard:
        raise ConfigError(f"{table.key('soft_limit')}: {soft} is above hard_limit {hard}")
    table.done()
    return Concurrency(type="requests" if kind == "requests" else "connections", soft_limit=soft, hard_limit=hard)


def _check_timing(table: _Table) -> tuple[float, float, float]:
    interval = table.duration("interval", 15.0)
    timeout = table.duration("timeout", 2.0)
    grace = table.duration("grace_period", 0.0)
    if interval <= 0:
        raise ConfigError(f"{table.key('interval')}: must be above zero")
    if timeout <= 0:
        raise ConfigError(f"{table.key('timeout')}: must be above zero")
    return interval, timeout, grace


def _http_check(table: _Table) -> HttpCheck:
    interval, timeout, grace = _check_timing(table)
    method = table.str_("method", "GET").upper()
    path = table.str_("path", "/")
    if not path.startswith("/"):
        raise ConfigError(f"{table.key('path')}: must start with /")
    table.get("protocol")
    table.get("tls_skip_verify")
    headers = table.string_map("headers")
    table.done()
    return HttpCheck(interval, timeout, grace, method, path, headers)


def _tcp_check(table: _Table) -> TcpCheck:
    interval, timeout, grace = _check_timing(table)
    table.done()
    return TcpCheck(interval, timeout, grace)


_FLY_SERVICE_KEYS = ("auto_stop_machines", "auto_start_machines", "min_machines_running")


def _http_service(table: _Table) -> Service:
    port = table.port("internal_port")
    assert port is not None
    checks = tuple(_http_check(t) for t in table.tables("checks"))
    for key in _FLY_SERVICE_KEYS:
        table.get(key)
    service = Service(
        internal_port=port,
        ports=(80, 443),
        handlers=("http",),
        force_https=table.bool_("force_https"),
        idle_timeout=table.duration("idle_timeout", 60.0),
        processes=table.strings("processes"),
        concurrency=_concurrency(table.table("concurrency")),
        http_checks=checks,
        tcp_checks=tuple(_tcp_check(t) for t in table.tables("tcp_checks")),
    )
    table.done()
    return service


def _service(table: _Table) -> Service:
    port = table.port("internal_port")
    assert port is not None
    protocol = table.str_("protocol", "tcp")
    if protocol not in ("tcp", "udp"):
        raise ConfigError(f"{table.key('protocol')}: must be \"tcp\" or \"udp\"")
    ports: list[int] = []
    handlers: list[str] = []
    force_https = False
    for entry in table.tables("ports"):
        number = entry.port("port")
        assert number is not None
        ports.append(number)
        handlers.extend(h for h in entry.strings("handlers") if h not in handlers)
        force_https = entry.bool_("force_https") or force_https
        entry.done()
    for key in _FLY_SERVICE_KEYS:
        table.get(key)
    service = Service(
        internal_port=port,
        protocol=protocol,
        ports=tuple(ports),
        handlers=tuple(handlers),
        force_https=force_https,
        idle_timeout=table.duration("idle_timeout", 60.0),
        processes=table.strings("processes"),
        concurrency=_concurrency(table.table("concurrency")),
        http_checks=tuple(_http_check(t) for t in table.tables("http_checks")),
        tcp_checks=tuple(_tcp_check(t) for t in table.tables("tcp_checks")),
    )
    table.done()
    return service


def _restart(table: _Table) -> RestartPolicy:
    raw = table.str_("policy", "on-failure")
    policy = _RESTART_ALIASES.get(raw)
    if policy is None:
        raise ConfigError(f"{table.key('policy')}: must be \"always\", \"on-failure\" or \"no\", got {raw!r}")
    retries = table.int_("retries", DEFAULT_RESTART_RETRIES, 0, 1_000_000)
    assert retries is not None
    processes = table.strings("processes")
    table.done()
    return RestartPolicy(policy, retries, processes)


def _restarts(top: _Table, groups: tuple[str, ...]) -> tuple[RestartPolicy, ...]:
    tables = top.tables("restart")
    entries = tuple(_restart(t) for t in tables)
    seen: set[str] = set()
    for table, entry in zip(tables, entries, strict=True):
        for group in entry.processes or ("",):
            if groups and group and group not in groups:
                raise ConfigError(f"{table.key('processes')}: no process group {group!r} in [processes]")
            if group in seen:
                which = f"process group {group!r}" if group else "every process group (no processes list)"
                raise ConfigError(f"{table.key('processes')}: a second restart policy for {which}")
            seen.add(group)
    return entries


_IGNORED_TOP = ("kill_signal", "kill_timeout", "build", "deploy", "mounts", "experimental", "vm", "metrics")


def from_doc(doc: Mapping[str, Any]) -> AppConfig:
    """Build an AppConfig from a parsed TOML document."""
    top = _Table(dict(doc), "")
    services: list[Service] = []
    http = top.table("http_service")
    if http is not None:
        services.append(_http_service(http))
    services.extend(_service(t) for t in top.tables("services"))
    for key in _IGNORED_TOP:
        top.get(key)
    processes = top.string_map("processes")
    restarts = _restarts(top, tuple(name for name, _ in processes))
    hostnames = top.strings("hostnames")
    for name in hostnames:
        # One spelling per name (lower case, no root dot): a hostname is a unique claim in the catalog.
        if len(name) > 253 or not re.fullmatch(r"[a-z0-9-]+(?:\.[a-z0-9-]+)*\.?", name.lower()):
            raise ConfigError(f"hostnames: not a host name: {name!r}")
    config = AppConfig(
        app=top.str_("app"),
        primary_region=top.str_("primary_region"),
        hostnames=tuple(dict.fromkeys(h.lower().rstrip(".") for h in hostnames)),
        env=top.string_map("env"),
        processes=processes,
        services=tuple(services),
        restarts=restarts,
        doc=dict(doc),
    )
    top.done()
    return config


def loads(text: str) -> AppConfig:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from exc
    return from_doc(doc)


def load(path: str | Path) -> AppConfig:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from exc
    return loads(text)


DEFAULT = AppConfig()
