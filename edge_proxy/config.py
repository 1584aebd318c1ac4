"""The edge proxy's own settings: a frozen dataclass, loadable from TOML (unknown keys refused)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from edge_proxy.errors import EdgeProxyError


class ConfigError(EdgeProxyError):
    pass


@dataclass(frozen=True)
class ProxyConfig:
    region: str = ""
    host: str = ""  # this edge's host row in the catalog (its region comes from there)
    domain: str = "sixpn.test"
    listen: tuple[str, ...] = ("0.0.0.0:80",)
    tls_listen: tuple[str, ...] = ()
    cert_dir: str = ""  # <hostname>.crt + <hostname>.key pairs, chosen by SNI
    http2: bool = True  # offer h2 in ALPN on TLS listeners
    metrics_listen: str = "127.0.0.1:9091"  # GET /metrics; "" = off. Best effort: a busy port is logged
    upstream_override: tuple[tuple[str, str], ...] = ()  # (machine id or 6PN address, "host:port")
    workers: int = 1
    connect_timeout: float = 3.0  # the mesh's worst RTT is ~0.3 s; a lost SYN is retried at 1 s
    first_byte_timeout: float = 60.0
    header_timeout: float = 10.0
    body_timeout: float = 60.0  # silence allowed inside a request body
    idle_timeout: float = 60.0  # client keep-alive when the app sets none
    queue_timeout: float = 5.0  # how long a request waits while every machine is at hard_limit
    passive_down: float = 10.0  # how long a connect failure keeps a machine out
    max_head_bytes: int = 32 * 1024
    measure_rtt: bool = True
    rtt_interval: float = 2.0
    access_log: str = "-"  # "-" = stderr, "" = off, else a file path
    drain_timeout: float = 30.0
    pool_max_per_machine: int = 256
    max_connections: int = 10000  # client connections per worker; more are closed at once
    # Client connections per worker from one client (an IPv4 address, or an IPv6 /64); more are closed at once,
    # so one client cannot take the worker's `max_connections` from everyone else.
    max_connections_per_client: int = 256
    # Seconds from the accept within which a new connection must have sent its first request head (Slowloris:
    # idle or trickling new connections); later requests get `header_timeout` from their first byte.
    first_head_timeout: float = 5.0
    name: str = "sixpn-edge"  # Server and Via name
    lane: bool = True  # answer simple GETs from the read callbacks (edge_proxy/lane.py); off: parser path only


_TUPLES = {"listen", "tls_listen"}


def load_config(path: str | Path, **overrides: Any) -> ProxyConfig:
    try:
        doc = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return from_doc(doc, **overrides)


def from_doc(doc: dict[str, Any], **overrides: Any) -> ProxyConfig:
    known = {f.name: f for f in fields(ProxyConfig)}
    values: dict[str, Any] = {}
    for key, value in doc.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"{key}: unknown key")
        if name in _TUPLES:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{key}: expected a list of strings")
            value = tuple(value)
        elif name == "upstream_override":
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a table of id = \"host:port\"")
            value = tuple((str(k), str(v)) for k, v in value.items())
        values[name] = value
    config = ProxyConfig(**values)
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


def parse_hostport(text: str, default_port: int = 80) -> tuple[str, int]:
    """`0.0.0.0:80`, `[::]:80`, `:8080`, `127.0.0.1` -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    elif ":" in text:
        host, port = text, ""
    else:
        host, port = text, ""
    try:
        number = int(port) if port else default_port
    except ValueError:
        raise ConfigError(f"{text!r}: invalid port") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"{text!r}: invalid port")
    return host or "0.0.0.0", number
