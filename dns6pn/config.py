"""The DNS server's settings: frozen, from flags or a TOML file that may hold only known keys."""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from dns6pn import wire
from dns6pn.engine import DEFAULT_CACHE_ENTRIES, DEFAULT_TTL
from dns6pn.errors import DnsError
from dns6pn.upstream import DEFAULT_TIMEOUT

Address = tuple[str, int]
DNS_PORT = 53


@dataclass(frozen=True)
class ServerConfig:
    """`listen` empty: derive the addresses from `host`'s role (worker: fdaa::3, gateway: each `<net>::3`)."""

    host: str | None = None
    listen: tuple[Address, ...] = ()
    upstreams: tuple[Address, ...] = ()
    ttl: int = DEFAULT_TTL
    max_udp: int = wire.DEFAULT_MAX_UDP
    cache_entries: int = DEFAULT_CACHE_ENTRIES
    upstream_timeout: float = DEFAULT_TIMEOUT
    port: int = DNS_PORT  # the port of the addresses derived from `host`
    source_override: str | None = None  # tests over loopback: every query comes "from" this 6PN address
    # TCP (RFC 7766 §6.2): open connections in all and per source (a 6PN network, an IPv4 address, an IPv6 /64);
    # seconds a new connection has for its first complete query, and an open one between queries.
    tcp_max_connections: int = 256
    tcp_max_per_source: int = 32
    tcp_first_timeout: float = 3.0
    tcp_idle_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not 0 <= self.ttl <= 0x7FFFFFFF:
            raise DnsError(f"ttl must be 0..2^31-1 seconds (RFC 2181 §8), not {self.ttl}")
        if not 512 <= self.max_udp <= 65535:
            raise DnsError(f"max_udp must be 512..65535, not {self.max_udp}")
        if self.cache_entries < 1 or self.upstream_timeout <= 0:
            raise DnsError("cache_entries and upstream_timeout must be positive")
        if min(self.tcp_max_connections, self.tcp_max_per_source) < 1 or min(self.tcp_first_timeout,
                                                                             self.tcp_idle_timeout) <= 0:
            raise DnsError("the TCP limits and timeouts must be positive")


def parse_address(text: str, default_port: int = DNS_PORT) -> Address:
    """`[v6]:port`, `v4:port`, or a bare address (port 53)."""
    host, port = text, default_port
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise DnsError(f"bad address {text!r}: expected [ADDR]:PORT")
        port = int(rest[1:]) if rest[1:].isdigit() else (default_port if not rest else -1)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text) if port_text.isdigit() else -1
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise DnsError(f"bad address {text!r}: {host!r} is not an IP address") from None
    if not 0 <= port <= 65535:
        raise DnsError(f"bad address {text!r}: port must be 0..65535")
    return host, port


_TYPES: dict[str, tuple[type, ...]] = {
    "host": (str,), "ttl": (int,), "max_udp": (int,), "cache_entries": (int,), "port": (int,),
    "upstream_timeout": (float, int), "source_override": (str,),
}


def from_toml(path: Path) -> ServerConfig:
    """Keys are the field names; `listen` and `upstreams` are lists of address strings."""
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise DnsError(f"{path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise DnsError(f"{path}: not valid TOML: {exc}") from exc
    known = {f.name for f in fields(ServerConfig)}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise DnsError(f"{path}: unknown keys {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    values: dict[str, Any] = dict(doc)
    for key, value in values.items():
        want = _TYPES.get(key)
        if want is not None and (not isinstance(value, want) or isinstance(value, bool)):
            raise DnsError(f"{path}: {key} must be of type {want[0].__name__}")
    for key in ("listen", "upstreams"):
        if key in values:
            if not isinstance(values[key], list) or not all(isinstance(v, str) for v in values[key]):
                raise DnsError(f"{path}: {key} must be a list of address strings")
            values[key] = tuple(parse_address(v) for v in values[key])
    try:
        return ServerConfig(**values)
    except TypeError as exc:
        raise DnsError(f"{path}: {exc}") from exc


def override(config: ServerConfig, **changes: Any) -> ServerConfig:
    """Flags given on the command line win over the file; None means not given."""
    return replace(config, **{k: v for k, v in changes.items() if v is not None})
