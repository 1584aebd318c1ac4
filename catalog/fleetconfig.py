"""A host's config file: who the host is and how it reaches the replicated catalog.

One TOML file per host (`/etc/sixpn/host.toml` on a real fleet; `RUN/hosts/<name>/host.toml` in the lab),
written by `sixpn host init`, read by every sixpn command on that host (`sixpn --host-config FILE` or `$SIXPN_CONFIG`):

    [host]
    name = "worker-gru"
    role = "worker"                  # worker | edge | gateway | operator (a CLI-only seat, no services)
    region = "gru"
    underlay = "198.51.100.2"
    state_dir = "/var/lib/sixpn"     # the local replica (catalog.db) and the host's own state

    [catalog]
    mode = "replicated"              # or "embedded": a single host, no NATS
    nats = ["nats://198.51.100.2:4222", "nats://198.51.100.34:4222"]   # the host's own region first
    credentials = "/etc/sixpn/nats.creds"   # 0600 TOML: user = "...", password = "..."
    stream = "SIXPN_CATALOG"

The credentials never appear in this file, on a command line or in a log: only their path does.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalog.errors import ConfigError

CONFIG_ENV = "SIXPN_CONFIG"
DEFAULT_STREAM = "SIXPN_CATALOG"
ROLES = ("worker", "edge", "gateway", "operator")
MODES = ("embedded", "replicated")


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str

    def __repr__(self) -> str:  # never print the password
        return f"Credentials(user={self.user!r}, password=***)"


@dataclass(frozen=True)
class CatalogConfig:
    mode: str = "embedded"
    nats: tuple[str, ...] = ()
    credentials: Path | None = None
    stream: str = DEFAULT_STREAM

    @property
    def replicated(self) -> bool:
        return self.mode == "replicated"

    def load_credentials(self) -> Credentials | None:
        if self.credentials is None:
            return None
        return read_credentials(self.credentials)


@dataclass(frozen=True)
class HostConfig:
    name: str
    role: str
    region: str
    underlay: str
    state_dir: Path
    catalog: CatalogConfig
    path: Path | None = None  # where it was read from


def _need(table: dict[str, Any], key: str, where: str, kind: type) -> Any:
    if key not in table:
        raise ConfigError(f"{where}.{key}: missing")
    value = table[key]
    if not isinstance(value, kind):
        raise ConfigError(f"{where}.{key}: must be a {kind.__name__}, not {type(value).__name__}")
    return value


def parse_host_config(doc: dict[str, Any], path: Path | None = None) -> HostConfig:
    unknown = set(doc) - {"host", "catalog"}
    if unknown:
        raise ConfigError(f"{', '.join(sorted(unknown))}: unknown table(s) in a host config")
    host = doc.get("host", {})
    cat = doc.get("catalog", {})
    if not isinstance(host, dict) or not isinstance(cat, dict):
        raise ConfigError("[host] and [catalog] must be tables")
    for table, allowed, where in ((host, {"name", "role", "region", "underlay", "state_dir"}, "host"),
                                  (cat, {"mode", "nats", "credentials", "stream"}, "catalog")):
        extra = set(table) - allowed
        if extra:
            raise ConfigError(f"{where}.{sorted(extra)[0]}: unknown key")
    role = _need(host, "role", "host", str)
    if role not in ROLES:
        raise ConfigError(f"host.role: must be one of {', '.join(ROLES)}, not {role!r}")
    mode = cat.get("mode", "embedded")
    if mode not in MODES:
        raise ConfigError(f"catalog.mode: must be one of {', '.join(MODES)}, not {mode!r}")
    nats = cat.get("nats", [])
    if not isinstance(nats, list) or not all(isinstance(u, str) for u in nats):
        raise ConfigError("catalog.nats: must be a list of nats:// URLs")
    if mode == "replicated" and not nats:
        raise ConfigError("catalog.nats: a replicated catalog needs at least one NATS URL")
    creds = cat.get("credentials")
    if creds is not None and not isinstance(creds, str):
        raise ConfigError("catalog.credentials: must be a path")
    return HostConfig(
        name=_need(host, "name", "host", str), role=role, region=_need(host, "region", "host", str),
        underlay=str(host.get("underlay", "")), state_dir=Path(_need(host, "state_dir", "host", str)),
        catalog=CatalogConfig(mode=mode, nats=tuple(nats), credentials=Path(creds) if creds else None,
                              stream=str(cat.get("stream", DEFAULT_STREAM))),
        path=path,
    )


def load_host_config(path: str | Path) -> HostConfig:
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_host_config(doc, path)


def config_from_env() -> HostConfig | None:
    value = os.environ.get(CONFIG_ENV)
    return load_host_config(value) if value else None


def render_host_config(config: HostConfig) -> str:
    def q(value: object) -> str:
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["[host]", f"name = {q(config.name)}", f"role = {q(config.role)}", f"region = {q(config.region)}",
             f"underlay = {q(config.underlay)}", f"state_dir = {q(config.state_dir)}", "", "[catalog]",
             f"mode = {q(config.catalog.mode)}", f"nats = [{', '.join(q(u) for u in config.catalog.nats)}]",
             f"stream = {q(config.catalog.stream)}"]
    if config.catalog.credentials is not None:
        lines.append(f"credentials = {q(config.catalog.credentials)}")
    return "\n".join(lines) + "\n"


def read_credentials(path: Path) -> Credentials:
    """A credentials file must be the owner's alone (0600): refuse one that others can read."""
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{path}: credentials must not be readable by others (chmod 600)")
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    user, password = doc.get("user"), doc.get("password")
    if not isinstance(user, str) or not isinstance(password, str):
        raise ConfigError(f"{path}: needs user = \"...\" and password = \"...\"")
    return Credentials(user, password)


def write_private(path: Path, text: str) -> None:
    """Write `text` to a 0600 file in a 0700 directory, atomically (never a moment world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)
