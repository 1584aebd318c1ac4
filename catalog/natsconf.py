"""The NATS cluster behind the replicated catalog: server configs, users and their permissions (pure).

One `nats-server` per region (fleet.md), clustered by routes; JetStream holds the catalog's stream. Who may do
what is decided here, by subject, and nowhere else:

- `admin`, the operator's CLI: everything (global writes on `sixpn.cat.global`, creating the stream).
- `host-<name>`, one host's replicator and agent: publish only on `sixpn.cat.host.<name>`; read the stream
  (stream info, its own ephemeral or ordered consumers, flow control); receive on `_INBOX.>`. No stream
  create/update/delete/purge, no `sixpn.cat.global`, no other host's subject.
- `route`, the servers themselves: the cluster's routes (a separate `cluster { authorization }`).

Machines and laptops get no user at all: a connection without credentials is refused.

Passwords are random (`mint_password`), written only to 0600 credentials files (`catalog.fleetconfig`); the
server config holds their bcrypt hashes (`$2a$`, made with the system's libcrypt), except the route password,
which a server must present to its peers (to the routes it is given and to those it learns by gossip) and
therefore holds in clear (the server config is written 0600).

The operator keeps the list of users and hashes in an *authorization table* (`users.toml`, see
`parse_users`/`render_users`), from which every server's config is rendered.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catalog.errors import ConfigError
from catalog.fleetconfig import DEFAULT_STREAM, Credentials
from catalog.regions import RegionTable

GLOBAL_SUBJECT = "sixpn.cat.global"
HOST_SUBJECT_PREFIX = "sixpn.cat.host."
ADMIN_USER = "admin"
ROUTE_USER = "route"
HOST_USER_PREFIX = "host-"
CLIENT_PORT = 4222
CLUSTER_PORT = 6222
MONITOR_PORT = 8222
DEFAULT_CLUSTER = "sixpn"
BCRYPT_COST = 11  # what `nats server passwd` uses
USER_ROLES = ("admin", "host", "route")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def host_subject(host: str) -> str:
    return HOST_SUBJECT_PREFIX + host


def host_user(host: str) -> str:
    return HOST_USER_PREFIX + host


def check_name(name: str, what: str = "host name") -> str:
    """Host and server names become NATS subjects and user names: lowercase letters, digits and dashes."""
    if not _NAME.match(name):
        raise ConfigError(f"{what} {name!r}: must be lowercase letters, digits and dashes (at most 63)")
    return name


# -- passwords ---------------------------------------------------------------------------------------


def mint_password() -> str:
    """A fresh random password (256 bits, URL-safe: it may sit in a route URL)."""
    return secrets.token_urlsafe(32)


def mint_credentials(user: str) -> Credentials:
    return Credentials(user, mint_password())


def render_credentials(creds: Credentials) -> str:
    """The 0600 credentials file (`catalog.fleetconfig.read_credentials` reads it back)."""
    return f'user = "{creds.user}"\npassword = "{creds.password}"\n'


_libcrypt: Any = None


def _crypt_lib() -> Any:
    global _libcrypt
    if _libcrypt is None:
        name = ctypes.util.find_library("crypt") or "libcrypt.so.1"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            raise ConfigError(f"cannot hash passwords: no libcrypt ({exc})") from exc
        lib.crypt_gensalt_rn.restype = ctypes.c_char_p
        lib.crypt_gensalt_rn.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int,
                                         ctypes.c_char_p, ctypes.c_int]
        lib.crypt_rn.restype = ctypes.c_char_p
        lib.crypt_rn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
        _libcrypt = lib
    return _libcrypt


_CRYPT_DATA_SIZE = 32768  # sizeof(struct crypt_data) in libxcrypt


def bcrypt_hash(password: str, cost: int = BCRYPT_COST) -> str:
    """`$2a$<cost>$...`, the form nats-server accepts in place of a password (libxcrypt's bcrypt; the
    reentrant calls, so threads may hash at once)."""
    lib = _crypt_lib()
    salt_buf = ctypes.create_string_buffer(64)
    salt = lib.crypt_gensalt_rn(b"$2a$", cost, secrets.token_bytes(16), 16, salt_buf, len(salt_buf))
    if not salt:
        raise ConfigError(f"libcrypt cannot make a bcrypt salt (cost {cost})")
    data = ctypes.create_string_buffer(_CRYPT_DATA_SIZE)
    out = lib.crypt_rn(password.encode(), salt, data, _CRYPT_DATA_SIZE)
    if not out or not out.startswith(b"$2a$"):
        raise ConfigError("libcrypt has no bcrypt")
    return str(out.decode())


def bcrypt_check(password: str, hashed: str) -> bool:
    lib = _crypt_lib()
    data = ctypes.create_string_buffer(_CRYPT_DATA_SIZE)
    out = lib.crypt_rn(password.encode(), hashed.encode(), data, _CRYPT_DATA_SIZE)
    return bool(out) and secrets.compare_digest(out, hashed.encode())


# -- the authorization table ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NatsUser:
    user: str
    role: str  # admin | host | route
    password_hash: str  # bcrypt
    host: str | None = None  # for role host

    def __repr__(self) -> str:
        return f"NatsUser({self.user!r}, role={self.role!r})"


def user_for(role: str, password: str, host: str | None = None, cost: int = BCRYPT_COST) -> NatsUser:
    if role not in USER_ROLES:
        raise ConfigError(f"role must be one of {', '.join(USER_ROLES)}, not {role!r}")
    if role == "host":
        if host is None:
            raise ConfigError("a host user needs its host's name")
        name = host_user(check_name(host))
    else:
        name = ADMIN_USER if role == "admin" else ROUTE_USER
    return NatsUser(name, role, bcrypt_hash(password, cost), host if role == "host" else None)


def parse_users(text: str, where: str = "users") -> dict[str, NatsUser]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from exc
    users: dict[str, NatsUser] = {}
    for name, row in doc.get("users", {}).items():
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: users.{name} must be a table")
        role, hashed, host = row.get("role"), row.get("hash"), row.get("host")
        if role not in USER_ROLES:
            raise ConfigError(f"{where}: users.{name}.role must be one of {', '.join(USER_ROLES)}")
        if not isinstance(hashed, str) or not hashed.startswith("$2"):
            raise ConfigError(f"{where}: users.{name}.hash must be a bcrypt hash ($2a$...)")
        if role == "host" and (not isinstance(host, str) or name != host_user(host)):
            raise ConfigError(f"{where}: users.{name}: a host user is host-<host> with host = \"<host>\"")
        users[name] = NatsUser(name, role, hashed, host if role == "host" else None)
    return users


def render_users(users: dict[str, NatsUser]) -> str:
    lines = ["# sixpn's NATS users (bcrypt hashes only; the passwords are in each holder's 0600 creds file)"]
    for name in sorted(users):
        u = users[name]
        lines += ["", f'[users."{name}"]', f'role = "{u.role}"', f'hash = "{u.password_hash}"']
        if u.host:
            lines.append(f'host = "{u.host}"')
    return "\n".join(lines) + "\n"


def load_users(path: Path) -> dict[str, NatsUser]:
    try:
        return parse_users(path.read_text(), str(path))
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from exc


# -- permissions ---------------------------------------------------------------------------------------


def host_permissions(host: str, stream: str = DEFAULT_STREAM) -> dict[str, dict[str, list[str]]]:
    """What `host-<host>` may publish and subscribe to (allow lists; anything else is refused by the server).

    Reading the stream with an ordered (or any ephemeral) consumer takes: stream info and lookup by subject,
    creating, inspecting and deleting consumers of this stream, pulling from them, acks and flow-control replies,
    and receiving on `_INBOX.>` (deliveries, JetStream API replies, publish acks)."""
    check_name(host)
    api = "$JS.API"
    allow_pub = [
        host_subject(host),
        f"{api}.INFO",
        f"{api}.STREAM.NAMES",
        f"{api}.STREAM.INFO.{stream}",
        f"{api}.CONSUMER.CREATE.{stream}",
        f"{api}.CONSUMER.CREATE.{stream}.>",
        f"{api}.CONSUMER.INFO.{stream}.*",
        f"{api}.CONSUMER.DELETE.{stream}.*",
        f"{api}.CONSUMER.MSG.NEXT.{stream}.*",
        f"{api}.STREAM.MSG.GET.{stream}",
        f"{api}.DIRECT.GET.{stream}",
        f"{api}.DIRECT.GET.{stream}.>",
        f"$JS.FC.{stream}.>",
        f"$JS.ACK.{stream}.>",
    ]
    # Spelled out although the allow list already refuses them: a reader of the config sees the intent.
    deny_pub = [GLOBAL_SUBJECT, f"{api}.STREAM.CREATE.>", f"{api}.STREAM.UPDATE.>", f"{api}.STREAM.DELETE.>",
                f"{api}.STREAM.PURGE.>", f"{api}.STREAM.MSG.DELETE.>", f"{api}.CONSUMER.DURABLE.CREATE.>"]
    return {"publish": {"allow": allow_pub, "deny": deny_pub}, "subscribe": {"allow": ["_INBOX.>", "sixpn.cat.>"]}}


# -- servers and their config --------------------------------------------------------------------------


@dataclass(frozen=True)
class NatsServer:
    name: str  # server_name: the host it runs on
    region: str
    address: str  # the host's underlay address
    client_port: int = CLIENT_PORT
    cluster_port: int = CLUSTER_PORT
    monitor_port: int | None = MONITOR_PORT

    def _hostport(self, port: int) -> str:
        return f"[{self.address}]:{port}" if ":" in self.address else f"{self.address}:{port}"

    @property
    def client_url(self) -> str:
        return f"nats://{self._hostport(self.client_port)}"

    @property
    def listen(self) -> str:
        return self._hostport(self.client_port)

    @property
    def cluster_listen(self) -> str:
        return self._hostport(self.cluster_port)

    def route_url(self, route_password: str | None) -> str:
        auth = f"{ROUTE_USER}:{route_password}@" if route_password else ""
        return f"nats-route://{auth}{self._hostport(self.cluster_port)}"


@dataclass(frozen=True)
class JetStreamLimits:
    max_memory: str = "64MB"
    max_file: str = "1GB"


@dataclass(frozen=True)
class Cluster:
    servers: tuple[NatsServer, ...]
    name: str = DEFAULT_CLUSTER
    limits: JetStreamLimits = field(default_factory=JetStreamLimits)

    def server(self, name: str) -> NatsServer:
        for s in self.servers:
            if s.name == name:
                return s
        raise ConfigError(f"no NATS server {name!r} in cluster {self.name} "
                          f"(servers: {', '.join(s.name for s in self.servers)})")

    def client_urls(self, region: str, regions: RegionTable | None = None) -> list[str]:
        """The URLs a host of `region` connects to: its own region's servers first, then the others, nearest
        first (by the region table's RTT, when given; else in cluster order)."""

        def key(s: NatsServer) -> tuple[int, float]:
            if s.region == region:
                return (0, 0.0)
            if regions is None:
                return (1, 0.0)
            try:
                return (1, regions.rtt(region, s.region))
            except Exception:
                return (2, 0.0)

        return [s.client_url for s in sorted(self.servers, key=key)]


def _q(value: str) -> str:
    """A quoted string for nats-server's config (no variable expansion inside quotes)."""
    if any(c in value for c in '"\\\n'):
        raise ConfigError(f"cannot put {value!r} in a NATS config")
    return f'"{value}"'


def _list(values: list[str]) -> str:
    return "[" + ", ".join(_q(v) for v in values) + "]"


def _permissions_block(perms: dict[str, dict[str, list[str]]], indent: str) -> list[str]:
    lines = [f"{indent}permissions: {{"]
    for kind in ("publish", "subscribe"):
        if kind not in perms:
            continue
        lines.append(f"{indent}  {kind}: {{")
        for verdict in ("allow", "deny"):
            if perms[kind].get(verdict):
                lines.append(f"{indent}    {verdict}: {_list(perms[kind][verdict])}")
        lines.append(f"{indent}  }}")
    lines.append(f"{indent}}}")
    return lines


def render_server_conf(cluster: Cluster, me: str, store_dir: Path | str, users: dict[str, NatsUser],
                       route_password: str | None = None, stream: str = DEFAULT_STREAM) -> str:
    """nats-server.conf for server `me` of `cluster`. `users`: the authorization table (admin and host users;
    the route user's hash, when present, guards the cluster port). `route_password`: the route user's clear
    password, presented to the other servers (then this file must be 0600)."""
    server = cluster.server(me)
    route_hash = users[ROUTE_USER].password_hash if ROUTE_USER in users else None
    if route_hash and not route_password:
        raise ConfigError("the cluster's routes are password-protected: this server needs the route credentials")
    lines = [
        f"# nats-server config of {server.name} ({server.region}), cluster {cluster.name}; written by sixpn.",
        f"server_name: {_q(server.name)}",
        f"listen: {_q(server.listen)}",
    ]
    if server.monitor_port is not None:
        mon = f"[{server.address}]" if ":" in server.address else server.address
        lines.append(f"http: {_q(f'{mon}:{server.monitor_port}')}")
    lines += [
        "max_payload: 1MB",
        "jetstream {",
        f"  store_dir: {_q(str(store_dir))}",
        f"  max_memory_store: {cluster.limits.max_memory}",
        f"  max_file_store: {cluster.limits.max_file}",
        "}",
        "cluster {",
        f"  name: {_q(cluster.name)}",
        f"  listen: {_q(server.cluster_listen)}",
        # One route per pair of servers (no pool of three, no per-account routes) and no compression
        # negotiation: fewer connections to race, and none redone after the RTT is measured.
        "  pool_size: -1",
        "  compression: off",
    ]
    if route_hash:
        # In clear, not the hash: a server dials the routes it learns by gossip (implicit routes) with these
        # credentials, so it must hold the password itself. It is checked against the users table's hash here.
        assert route_password is not None
        if not bcrypt_check(route_password, route_hash):
            raise ConfigError("the route credentials do not match the users table's route user")
        lines += ["  authorization {", f"    user: {_q(ROUTE_USER)}", f"    password: {_q(route_password)}", "  }"]
    # Each pair of servers has one dialer: a server dials the servers listed before it. When both sides of a
    # pair dial at once across a long RTT, each may drop a different one of the two connections as the
    # duplicate, and they churn for seconds (seen at 175 ms: the first JetStream leader came after 10 s
    # instead of 1). The dialer keeps retrying, so a restarted server of either side is reconnected. The
    # list includes the server itself (nats-server skips a route to itself), because JetStream refuses to
    # start a cluster member without a configured route.
    index = cluster.servers.index(server)
    others = [s.route_url(route_password if route_hash else None) for s in cluster.servers[:index + 1]]
    lines += [f"  routes: {_list(others)}", "}", "authorization {", "  users: ["]
    for name in sorted(users):
        user = users[name]
        if user.role == "route":
            continue
        lines.append(f"    {{user: {_q(user.user)}, password: {_q(user.password_hash)}")
        if user.role == "host":
            assert user.host is not None
            lines += _permissions_block(host_permissions(user.host, stream), "      ")
        lines.append("    }")
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"
