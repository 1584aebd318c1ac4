"""The routing core, rule by rule (spec edge-proxy.md "Choosing a machine" and "fly-replay")."""

from __future__ import annotations

import random

import pytest

from edge_proxy.routing import (
    Candidate,
    Chooser,
    ReplayError,
    Steering,
    app_for_host,
    parse_replay,
    replay_src,
    replay_steering,
    steering_from_headers,
)


def m(id: str, region: str = "gru", rtt: float = 1.0, **kw: object) -> Candidate:
    return Candidate(id=id, region=region, host=f"w-{region}", rtt_ms=rtt, **kw)  # type: ignore[arg-type]


def chooser(region: str = "gru", seed: int = 1) -> Chooser:
    return Chooser(local_region=region, rng=random.Random(seed))


def picks(c: Chooser, machines: list[Candidate], steer: Steering | None = None, n: int = 50) -> set[str]:
    out = set()
    for _ in range(n):
        d = c.choose(machines, steer or Steering())
        assert d.machine is not None, d
        out.add(d.machine.id)
    return out


def test_nearest_by_measured_rtt() -> None:
    ms = [m("far", "iad", 120), m("near", "gig", 8), m("mid", "sjc", 180)]
    assert picks(chooser("ams"), ms) == {"near"}


def test_ties_are_broken_at_random() -> None:
    ms = [m("a", rtt=1.0), m("b", rtt=1.2), m("c", rtt=40)]
    assert picks(chooser(), ms, n=200) == {"a", "b"}


def test_unhealthy_and_stopped_are_never_chosen() -> None:
    ms = [m("sick", healthy=False), m("off", started=False), m("ok", "gig", 8)]
    assert picks(chooser(), ms) == {"ok"}


def test_below_soft_preferred_within_region() -> None:
    ms = [m("busy", load=20, soft_limit=20), m("free", rtt=1.5, load=3, soft_limit=20)]
    assert picks(chooser(), ms) == {"free"}


def test_local_above_soft_beats_remote_below_soft() -> None:
    # Rule 3: leave the region only when every local machine is unhealthy or at hard_limit.
    ms = [m("local", load=25, soft_limit=20, hard_limit=30), m("remote", "gig", 8, load=0)]
    assert picks(chooser(), ms) == {"local"}


def test_local_at_hard_limit_goes_to_nearest_region() -> None:
    ms = [m("local", load=30, hard_limit=30), m("gig", "gig", 8), m("iad", "iad", 120)]
    assert picks(chooser(), ms) == {"gig"}


def test_local_unhealthy_goes_to_nearest_region() -> None:
    ms = [m("local", healthy=False), m("gig", "gig", 8), m("iad", "iad", 120)]
    assert picks(chooser(), ms) == {"gig"}


def test_all_at_hard_limit_is_at_capacity() -> None:
    ms = [m("a", load=5, hard_limit=5), m("b", "gig", 8, load=2, hard_limit=2)]
    d = chooser().choose(ms)
    assert d.outcome == "at_capacity" and d.machine is None


def test_none_healthy_is_no_machines() -> None:
    d = chooser().choose([m("a", healthy=False)])
    assert d.outcome == "no_machines"
    assert chooser().choose([]).outcome == "no_machines"


def test_above_soft_everywhere_picks_least_loaded() -> None:
    ms = [m("a", load=25, soft_limit=20), m("b", rtt=1.1, load=21, soft_limit=20)]
    assert picks(chooser(), ms) == {"b"}


def test_exclude_skips_tried_machines() -> None:
    ms = [m("a"), m("b", "gig", 8)]
    assert picks(chooser(), ms, Steering(exclude=frozenset({"a"}))) == {"b"}


def test_force_region() -> None:
    ms = [m("a"), m("b", "iad", 120)]
    assert picks(chooser(), ms, Steering(force_region="iad")) == {"b"}
    d = chooser().choose(ms, Steering(force_region="syd"))
    assert d.outcome == "forced_unavailable"
    d = chooser().choose([m("a"), m("b", "iad", 120, healthy=False)], Steering(force_region="iad"))
    assert d.outcome == "forced_unavailable"


def test_prefer_region_falls_back() -> None:
    ms = [m("a"), m("b", "iad", 120)]
    assert picks(chooser(), ms, Steering(prefer_region="iad")) == {"b"}
    assert picks(chooser(), ms, Steering(prefer_region="syd")) == {"a"}
    sick = [m("a"), m("b", "iad", 120, healthy=False)]
    assert picks(chooser(), sick, Steering(prefer_region="iad")) == {"a"}


def test_force_instance() -> None:
    ms = [m("a"), m("b", "iad", 120)]
    assert picks(chooser(), ms, Steering(force_instance="b")) == {"b"}
    assert chooser().choose(ms, Steering(force_instance="zz")).outcome == "forced_unavailable"
    sick = [m("a"), m("b", "iad", 120, healthy=False)]
    assert chooser().choose(sick, Steering(force_instance="b")).outcome == "forced_unavailable"
    full = [m("a"), m("b", "iad", 120, load=3, hard_limit=3)]
    assert chooser().choose(full, Steering(force_instance="b")).outcome == "at_capacity"


def test_prefer_instance_falls_back_and_says_so() -> None:
    ms = [m("a"), m("b", "iad", 120)]
    d = chooser().choose(ms, Steering(prefer_instance="b"))
    assert d.machine is not None and d.machine.id == "b" and not d.preferred_unavailable
    d = chooser().choose(ms, Steering(prefer_instance="gone"))
    assert d.machine is not None and d.machine.id == "a" and d.preferred_unavailable


def test_steering_headers() -> None:
    steer = steering_from_headers([
        (b"fly-prefer-region", b"IAD"), (b"fly-force-instance-id", b"0123456789abcd"), (b"x-other", b"1"),
    ])
    assert steer == Steering(prefer_region="iad", force_instance="0123456789abcd")


@pytest.mark.parametrize(("value", "expected"), [
    ("region=gru", {"region": "gru"}),
    ("region=gru;state=abc", {"region": "gru", "state": "abc"}),
    (" instance=0123456789abcd ; state=x=y", {"instance": "0123456789abcd", "state": "x=y"}),
    ("prefer_instance=0123456789abcd", {"prefer_instance": "0123456789abcd"}),
    ("app=other", {"app": "other"}),
    ("elsewhere=true", {"elsewhere": True}),
    ("ELSEWHERE=True;region=iad", {"elsewhere": True, "region": "iad"}),
])
def test_parse_replay(value: str, expected: dict[str, object]) -> None:
    replay = parse_replay(value)
    for key, want in expected.items():
        assert getattr(replay, key) == want


@pytest.mark.parametrize("value", [
    "", "state=only", "region", "bogus=1", "region=a;region=b", "elsewhere=maybe", ";;",
])
def test_parse_replay_rejects(value: str) -> None:
    with pytest.raises(ReplayError):
        parse_replay(value)


def test_replay_steering() -> None:
    assert replay_steering(parse_replay("region=gru"), "m1") == Steering(force_region="gru")
    assert replay_steering(parse_replay("instance=m2"), "m1") == Steering(force_instance="m2")
    assert replay_steering(parse_replay("elsewhere=true"), "m1") == Steering(exclude=frozenset({"m1"}))
    ms = [m("m1"), m("m2", "gig", 8)]
    assert picks(chooser(), ms, replay_steering(parse_replay("elsewhere=true"), "m1")) == {"m2"}


def test_replay_src() -> None:
    assert replay_src("m1", "sjc", 17, "") == "instance=m1;region=sjc;t=17"
    assert replay_src("m1", "sjc", 17, "s") == "instance=m1;region=sjc;t=17;state=s"


def test_app_for_host() -> None:
    apps = ["web", "api"]
    names = {"www.example.com": "web"}
    assert app_for_host("web.sixpn.test", "sixpn.test", names, apps) == "web"
    assert app_for_host("API.sixpn.test.", "sixpn.test", names, apps) == "api"
    assert app_for_host("www.example.com", "sixpn.test", names, apps) == "web"
    assert app_for_host("nope.sixpn.test", "sixpn.test", names, apps) is None
    assert app_for_host("a.web.sixpn.test", "sixpn.test", names, apps) is None
    assert app_for_host("web.other.test", "sixpn.test", names, apps) is None
