"""The routing core (spec edge-proxy.md, "Choosing a machine"): pure functions of request + candidates.

No I/O, no clock: the proxy builds `Candidate`s from the catalog, its health book, load counters and RTT
estimates, and asks `choose` for one. Rules, in order:

1. candidates are started machines that pass their checks and are below `hard_limit`;
2. below `soft_limit` first; among those the nearest by measured RTT, ties (within `tie_ms`) at random;
3. the edge's region is left only when every local machine is unhealthy or at `hard_limit`;
4. every machine at `hard_limit`: `AT_CAPACITY` (the caller queues, then answers 503);
5. machines already tried for this request (`exclude`) are skipped (retry to the next candidate);
6. `fly-prefer-*` fall back to the rules above, `fly-force-*` do not.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from edge_proxy import fields

Outcome = Literal["ok", "no_machines", "at_capacity", "forced_unavailable"]


@dataclass(slots=True)  # built per request per machine: slots, not frozen (frozen __init__ is slow)
class Candidate:
    id: str
    region: str
    host: str
    rtt_ms: float
    load: int = 0
    soft_limit: int = 20
    hard_limit: int | None = None
    healthy: bool = True
    started: bool = True

    @property
    def at_hard_limit(self) -> bool:
        return self.hard_limit is not None and self.load >= self.hard_limit

    @property
    def below_soft_limit(self) -> bool:
        return self.load < self.soft_limit

    @property
    def usable(self) -> bool:
        return self.started and self.healthy and not self.at_hard_limit


@dataclass(frozen=True)
class Steering:
    """What request headers (or a fly-replay) ask for."""

    prefer_region: str = ""
    force_region: str = ""
    prefer_instance: str = ""
    force_instance: str = ""
    exclude: frozenset[str] = frozenset()  # tried already, or `elsewhere=true`


@dataclass(slots=True)
class Decision:
    outcome: Outcome
    machine: Candidate | None = None
    preferred_unavailable: bool = False  # a prefer_instance could not be honoured
    detail: str = ""


@dataclass
class Chooser:
    local_region: str
    tie_ms: float = 1.0
    tie_fraction: float = 0.2
    rng: random.Random = field(default_factory=random.Random)

    def choose(self, machines: Sequence[Candidate], steer: Steering = Steering()) -> Decision:
        exclude = steer.exclude
        pool = [m for m in machines if m.started and (not exclude or m.id not in exclude)]
        if steer.force_instance:
            return self._instance(pool, steer.force_instance, forced=True)
        if steer.prefer_instance:
            decision = self._instance(pool, steer.prefer_instance, forced=False)
            if decision.outcome == "ok":
                return decision
            fallback = self._choose(pool)
            return Decision(fallback.outcome, fallback.machine, True, fallback.detail)
        if steer.force_region:
            in_region = [m for m in pool if m.region == steer.force_region]
            if not in_region:
                return Decision("forced_unavailable", detail=f"no machine in region {steer.force_region}")
            decision = self._choose(in_region, steer.force_region)
            if decision.outcome == "no_machines":
                return Decision("forced_unavailable", detail=f"no healthy machine in region {steer.force_region}")
            return decision
        if steer.prefer_region:
            preferred = [m for m in pool if m.region == steer.prefer_region and m.usable]
            if preferred:
                return self._choose(preferred, steer.prefer_region)
        return self._choose(pool)

    def _instance(self, pool: Sequence[Candidate], machine_id: str, forced: bool) -> Decision:
        match = next((m for m in pool if m.id == machine_id), None)
        if match is None or not match.healthy:
            outcome: Outcome = "forced_unavailable" if forced else "no_machines"
            return Decision(outcome, detail=f"instance {machine_id} unavailable")
        if match.at_hard_limit:
            return Decision("at_capacity", detail=f"instance {machine_id} at its hard limit")
        return Decision("ok", match)

    def _choose(self, pool: Sequence[Candidate], region: str | None = None) -> Decision:
        local_region = region or self.local_region
        # One pass into four tiers (rule 3 before rule 2: local above-soft beats remote below-soft).
        local_free: list[Candidate] = []
        local_busy: list[Candidate] = []
        remote_free: list[Candidate] = []
        remote_busy: list[Candidate] = []
        any_healthy = False
        for m in pool:
            if not m.healthy:
                continue
            any_healthy = True
            if m.hard_limit is not None and m.load >= m.hard_limit:
                continue
            if m.region == local_region:
                (local_free if m.load < m.soft_limit else local_busy).append(m)
            else:
                (remote_free if m.load < m.soft_limit else remote_busy).append(m)
        if local_free:
            return Decision("ok", self._nearest(local_free))
        if not local_busy and remote_free:
            return Decision("ok", self._nearest(remote_free))
        tier = local_busy or remote_busy
        if not tier:
            if not any_healthy:
                return Decision("no_machines", detail="no healthy machines")
            return Decision("at_capacity", detail="every machine is at its hard limit")
        # All above soft limit: the least loaded relative to its soft limit, then the nearest.
        least = min(m.load / m.soft_limit for m in tier)
        return Decision("ok", self._nearest([m for m in tier if m.load / m.soft_limit <= least]))

    def _nearest(self, machines: Sequence[Candidate]) -> Candidate:
        if len(machines) == 1:
            return machines[0]
        best = min(m.rtt_ms for m in machines)
        window = max(self.tie_ms, best * self.tie_fraction)
        tied = [m for m in machines if m.rtt_ms <= best + window]
        return tied[0] if len(tied) == 1 else self.rng.choice(tied)


# -- fly-replay (spec: "fly-replay") ---------------------------------------------------------------------

MAX_REPLAYS = 10
REPLAY_BODY_LIMIT = 1 << 20


class ReplayError(ValueError):
    """A fly-replay header the proxy cannot act on."""


@dataclass(frozen=True)
class Replay:
    region: str = ""
    instance: str = ""
    prefer_instance: str = ""
    app: str = ""
    elsewhere: bool = False
    state: str = ""

    @property
    def has_target(self) -> bool:
        return bool(self.region or self.instance or self.prefer_instance or self.app or self.elsewhere)


_REPLAY_KEYS = {"region", "instance", "prefer_instance", "app", "elsewhere", "state"}


def parse_replay(value: str) -> Replay:
    """`region=gru;state=abc` -> Replay. Unknown fields are refused so a typo is not a silent no-op."""
    fields: dict[str, str] = {}
    for part in value.split(";"):
        part = part.strip()
        if not part:
            continue
        key, sep, val = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in _REPLAY_KEYS:
            raise ReplayError(f"invalid fly-replay field {part!r}")
        if key in fields:
            raise ReplayError(f"duplicate fly-replay field {key!r}")
        fields[key] = val.strip()
    elsewhere = fields.get("elsewhere", "").lower()
    if elsewhere not in ("", "true", "false"):
        raise ReplayError(f"fly-replay elsewhere must be true or false, not {elsewhere!r}")
    replay = Replay(
        region=fields.get("region", "").lower(), instance=fields.get("instance", ""),
        prefer_instance=fields.get("prefer_instance", ""), app=fields.get("app", ""),
        elsewhere=elsewhere == "true", state=fields.get("state", ""),
    )
    if not replay.has_target:
        raise ReplayError("fly-replay names no target (region, instance, prefer_instance, app or elsewhere)")
    return replay


def replay_steering(replay: Replay, from_machine: str) -> Steering:
    """Where a replay goes: `instance` is forced, `prefer_instance` falls back, `region` is forced."""
    exclude = frozenset({from_machine}) if replay.elsewhere else frozenset()
    return Steering(force_region=replay.region, force_instance=replay.instance,
                    prefer_instance=replay.prefer_instance, exclude=exclude)


def replay_src(instance: str, region: str, t_us: int, state: str) -> str:
    """The `fly-replay-src` value the replayed request carries."""
    src = f"instance={instance};region={region};t={t_us}"
    return f"{src};state={state}" if state else src


def steering_from_headers(get: Iterable[tuple[bytes, bytes]]) -> Steering:
    """`fly-prefer-region`, `fly-force-region`, `fly-prefer-instance-id`, `fly-force-instance-id`."""
    values: dict[bytes, str] = {}
    for name, value in get:
        if name in STEERING_HEADERS and name not in values:
            values[name] = value.decode("latin-1").strip()
    return Steering(
        prefer_region=values.get(b"fly-prefer-region", "").lower(),
        force_region=values.get(b"fly-force-region", "").lower(),
        prefer_instance=values.get(b"fly-prefer-instance-id", ""),
        force_instance=values.get(b"fly-force-instance-id", ""),
    )


STEERING_HEADERS = fields.STEERING


def app_for_host(host: str, domain: str, hostnames: dict[str, str], apps: Collection[str]) -> str | None:
    """The app a Host header names: `<app>.<domain>` (the edge's own domain: no app's `hostnames` can take it
    from the app it names), else a configured hostname."""
    host = host.lower().rstrip(".")
    suffix = "." + domain.lower().strip(".")
    if host.endswith(suffix):
        name = host[: -len(suffix)]
        if "." not in name and name in apps:
            return name
    return hostnames.get(host)
