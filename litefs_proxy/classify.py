"""What to do with a request, in the spec's order; pure functions of the request line, config and mount state.

1. passthrough glob -> straight to the target        2. GET /litefs/health -> health
3. GET/HEAD are reads unless always-forward matches; every other method (OPTIONS too) is a write
Then a write is decided by the node's role, a read by the client's `__txid` against the local position.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from urllib.parse import unquote

from litefs_proxy.config import ProxyConfig
from litefs_proxy.globs import any_match
from litefs_proxy.mountfiles import NO_PRIMARY_LAG_MS, Pos, Role

HEALTH_PATH = "/litefs/health"
READ_METHODS = frozenset({"GET", "HEAD"})


class Kind(Enum):
    PASSTHROUGH = "passthrough"
    HEALTH = "health"
    READ = "read"
    WRITE = "write"


@dataclass(frozen=True)
class Route:
    kind: Kind
    # LiteFS sets the cookie by method (isWriteRequest), so an always-forwarded GET is a write without one.
    cookie: bool = False


def request_path(target: str) -> str:
    """The decoded path of a request target, without query or fragment (Go's r.URL.Path)."""
    path = target.split("?", 1)[0].split("#", 1)[0]
    if path.lower().startswith(("http://", "https://")):  # absolute-form, RFC 9112 §3.2.2
        rest = path.split("://", 1)[1]
        path = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    return unquote(path)


def classify(method: str, target: str, cfg: ProxyConfig) -> Route:
    path = request_path(target)
    if any_match(cfg.passthrough, path):
        return Route(Kind.PASSTHROUGH)
    if method == "GET" and path == HEALTH_PATH:
        return Route(Kind.HEALTH)
    if method in READ_METHODS:
        if any_match(cfg.always_forward, path):
            return Route(Kind.WRITE, cookie=False)
        return Route(Kind.READ)
    return Route(Kind.WRITE, cookie=True)


class WriteAction(Enum):
    LOCAL = "local"  # this node is the primary: forward to the target
    REPLAY = "replay"  # answer `fly-replay: instance=<primary>` and let the edge replay it
    FORWARD = "forward"  # sixpn forward mode: proxy it to the primary ourselves
    WAIT = "wait"  # no primary known yet: wait up to primary-redirect-timeout


def decide_write(role: Role, mode: str) -> WriteAction:
    if role == "primary":
        return WriteAction.LOCAL
    if role == "unknown":
        return WriteAction.WAIT
    return WriteAction.FORWARD if mode == "forward" else WriteAction.REPLAY


def read_wait(client_txid: int, pos: Pos | None) -> int:
    """The TXID to wait for before forwarding a read, or 0 to forward at once.

    No (or a zero) cookie, or no database yet (LiteFS: `db == nil`), forwards at once.
    """
    if client_txid == 0 or pos is None or pos.txid >= client_txid:
        return 0
    return client_txid


def health_ok(lag_ms: int | None, max_lag: float) -> bool:
    """`max-lag = 0` disables the check; otherwise healthy while lag <= max-lag (LiteFS: lag > MaxLag fails).

    `.lag` reads `+2147483647` while LiteFS's primary timestamp is -1 (a replica before its first sync, a
    candidate before it holds the lease, no primary known): LiteFS's `Store.Lag()` reports 0 then (store.go:
    1652-1658), so health stays 200 through deploys and elections.
    """
    if max_lag <= 0 or lag_ms is None or lag_ms == NO_PRIMARY_LAG_MS:
        return True
    return lag_ms <= max_lag * 1000


def forward_address(template: str, primary: str, port: int) -> str:
    """The primary's proxy address in forward mode: `{primary}` is `.primary`'s hostname."""
    return template.replace("{primary}", primary).replace("{port}", str(port))


# -- primary-region mode (no LiteFS: a Postgres-style primary region) ----------------------------------------

RW_COOKIE = "__sixpn_primary"


class RegionAction(Enum):
    LOCAL = "local"
    LOCAL_WITH_WINDOW = "local+window"  # a write replayed here: open the client's read-your-writes window
    REPLAY_REGION = "replay-region"


def decide_region(route: Route, region: str, primary_region: str, *, replayed: bool,
                  window_until: float, now: float) -> RegionAction:
    """Writes outside the primary region are replayed there; so are reads inside a client's rw window."""
    in_primary = region == primary_region
    if route.kind in (Kind.PASSTHROUGH, Kind.HEALTH):
        return RegionAction.LOCAL
    if route.kind is Kind.WRITE:
        if not in_primary:
            return RegionAction.REPLAY_REGION
        return RegionAction.LOCAL_WITH_WINDOW if replayed and route.cookie else RegionAction.LOCAL
    if not in_primary and window_until > now:
        return RegionAction.REPLAY_REGION
    return RegionAction.LOCAL


def parse_window(value: str | None) -> float:
    """The rw-window cookie holds its expiry as integer unix seconds; anything else means no window."""
    if value is None or not value.isdigit() or len(value) > 12:
        return 0.0
    return float(value)


def window_cookie(now: float, window: float) -> str:
    until = int(now + window) + 1
    return f"{RW_COOKIE}={until}; Path=/; Max-Age={int(window) + 1}; HttpOnly"
