"""A hostname belongs to one app: the catalog refuses a second claim at write time (issue 15, leak 1)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from catalog import Catalog, Conflict, State
from catalog.errors import ConfigError
from catalog.replicated import ReplicatedCatalog
from edge_proxy.table import RoutingTable
from tests.catalog.conftest import MakeCatalog

HERE = Path(__file__).parent


def config(app: str, *hostnames: str) -> dict[str, Any]:
    return {"app": app, "hostnames": list(hostnames), "http_service": {"internal_port": 8080}}


@pytest.fixture
def cat(tmp_path: Path, make_catalog: MakeCatalog) -> Iterator[Catalog]:
    """The embedded and the replicated catalog alike (tests/catalog/conftest.py)."""
    catalog = make_catalog(tmp_path / "state")
    catalog.create_org("acme")
    catalog.create_org("globex")
    catalog.create_app("web", "acme", config=config("web", "shop.example.com", "www.example.com"))
    yield catalog
    catalog.close()


def test_another_app_cannot_claim_a_held_hostname(cat: Catalog) -> None:
    before = cat.version()
    with pytest.raises(Conflict, match=r"'shop\.example\.com' belongs to another app"):
        cat.create_app("evil", "globex", config=config("evil", "shop.example.com"))
    with pytest.raises(Conflict):  # not in another spelling either
        cat.create_app("evil", "globex", config=config("evil", "SHOP.Example.com."))
    with pytest.raises(Conflict):  # nor in the same org
        cat.create_app("api", "acme", config=config("api", "www.example.com"))
    assert cat.version() == before  # refused writes change nothing
    cat.create_app("evil", "globex", config=config("evil"))
    with pytest.raises(Conflict, match="belongs to another app"):
        cat.set_app_config("evil", config("evil", "other.example.com", "www.example.com"))
    assert cat.app("evil").config.hostnames == ()
    cat.set_app_config("evil", config("evil", "other.example.com"))  # the refused write claimed nothing
    assert cat.app("evil").config.hostnames == ("other.example.com",)


def test_the_error_does_not_name_the_holder(cat: Catalog) -> None:
    with pytest.raises(Conflict) as caught:
        cat.create_app("evil", "globex", config=config("evil", "shop.example.com"))
    assert "acme" not in str(caught.value) and "'web'" not in str(caught.value)


def test_config_change_and_delete_release_hostnames(cat: Catalog) -> None:
    cat.set_app_config("web", config("web", "www.example.com", "new.example.com"))  # keeps www, drops shop
    cat.create_app("evil", "globex", config=config("evil", "shop.example.com"))
    with pytest.raises(Conflict):
        cat.set_app_config("evil", config("evil", "shop.example.com", "new.example.com"))
    cat.set_app_config("web", config("web", "www.example.com", "new.example.com"))  # unchanged: no self-conflict
    cat.delete_app("web")
    cat.set_app_config("evil", config("evil", "shop.example.com", "www.example.com", "new.example.com"))
    assert cat.app("evil").config.hostnames == ("shop.example.com", "www.example.com", "new.example.com")


def test_a_hostname_listed_twice_by_one_app_is_one_claim(cat: Catalog) -> None:
    app = cat.create_app("blog", "acme", config=config("blog", "blog.example.com", "Blog.example.com."))
    assert app.config.hostnames == ("blog.example.com",)


@pytest.mark.parametrize("bad", ["a..b", ".a", "a_b.com", "x" * 254, ""])
def test_malformed_hostnames_are_refused(cat: Catalog, bad: str) -> None:
    with pytest.raises(ConfigError, match="hostnames"):
        cat.create_app("blog", "acme", config=config("blog", bad))


def test_two_replicas_cannot_both_claim_a_hostname(tmp_path: Path, make_catalog: MakeCatalog) -> None:
    """Two hosts' handles (two replicas of one stream, or two handles on one embedded catalog)."""
    first = make_catalog(tmp_path / "a")
    second = make_catalog(tmp_path / ("b" if isinstance(first, ReplicatedCatalog) else "a"))
    try:
        first.create_org("acme")
        first.create_org("globex")
        first.create_app("web", "acme", config=config("web", "shop.example.com"))
        with pytest.raises(Conflict, match="belongs to another app"):
            second.create_app("evil", "globex", config=config("evil", "shop.example.com"))
        second.create_app("evil", "globex", config=config("evil"))
        first.set_app_config("web", config("web"))  # released on one replica, claimable from the other
        if isinstance(second, ReplicatedCatalog):
            second.sync()  # a stale replica refuses a claim released elsewhere (safe); a stale one never lets
            # a taken claim through: its publish fails compare-and-set, and the write runs again synced
        second.set_app_config("evil", config("evil", "shop.example.com"))
        if isinstance(first, ReplicatedCatalog):
            first.sync()
        assert first.app("evil").config.hostnames == ("shop.example.com",)
        with pytest.raises(Conflict):
            first.set_app_config("web", config("web", "shop.example.com"))
    finally:
        first.close()
        second.close()


def test_two_writer_processes_race_for_the_same_hostnames(tmp_path: Path) -> None:
    """Two OS processes create apps (in two orgs) claiming the same hostname, round after round: exactly one
    wins each round, and the catalog holds one app per hostname."""
    state_dir = tmp_path / "state"
    with Catalog(state_dir) as cat:
        cat.create_org("acme")
        cat.create_org("globex")
    go = tmp_path / "go"
    rounds = 40
    procs = [subprocess.Popen([sys.executable, str(HERE / "hostname_proc.py"), str(state_dir), org, prefix,
                               str(rounds), str(go)], stdout=subprocess.PIPE, text=True)
             for org, prefix in (("acme", "a"), ("globex", "g"))]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    go.touch()
    outcomes = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        outcomes.append({index: result for result, index in (line.split() for line in out.splitlines())})
    for i in range(rounds):
        assert sorted(o[str(i)] for o in outcomes) == ["lost", "won"], f"round {i}: {outcomes}"
    with Catalog(state_dir) as cat:
        state = cat.snapshot()
    holders: dict[str, list[str]] = {}
    for app in state.apps.values():
        for hostname in app.config.hostnames:
            holders.setdefault(hostname, []).append(app.name)
    assert sorted(holders) == sorted(f"h{i}.example.com" for i in range(rounds))
    assert all(len(apps) == 1 for apps in holders.values())
    assert not RoutingTable(state, "sixpn.test").contested


def test_state_with_two_owners_routes_the_name_to_neither() -> None:
    """A catalog that somehow holds two claims (e.g. written before claims existed): deterministic, fail closed."""
    from catalog.models import App

    state = State()
    state.put(App("web", "acme", "acme", config("web", "shop.example.com")))
    state.put(App("evil", "globex", "globex", config("evil", "shop.example.com", "web.sixpn.test", "mine.test")))
    table = RoutingTable(state, "sixpn.test")
    assert table.contested == {"shop.example.com"}
    assert table.app_for_host("shop.example.com") is None
    route = table.app_for_host("web.sixpn.test")  # the edge's own name for acme's app, listed by globex
    assert route is not None and route.name == "web"
    route = table.app_for_host("mine.test")
    assert route is not None and route.name == "evil"


def test_a_catalog_from_before_claims_gets_them_at_the_first_app_write(tmp_path: Path) -> None:
    """Apps written before hostnames were claimed: their claims are made once, by the first app write."""
    import sqlite3

    with Catalog(tmp_path / "state") as cat:
        cat.create_org("acme")
        cat.create_org("globex")
        cat.create_app("web", "acme", config=config("web", "shop.example.com"))
    db = sqlite3.connect(tmp_path / "state" / "catalog.db")
    with db:  # as an older catalog left it: no claims, no marker
        db.execute("DELETE FROM addresses WHERE address LIKE 'hostname:%'")
        db.execute("DELETE FROM counters WHERE name='hostname_claims'")
    db.close()
    with Catalog(tmp_path / "state") as cat, pytest.raises(Conflict):
        cat.create_app("evil", "globex", config=config("evil", "shop.example.com"))
