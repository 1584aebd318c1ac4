"""A small catalog world shared by the wgmesh unit tests (no I/O beyond a temp SQLite file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from catalog import Catalog
from wgmesh import keys

WEB = {"http_service": {"internal_port": 8080}}


@dataclass
class World:
    cat: Catalog
    keys: dict[str, keys.KeyPair]


def make_world(state_dir: Path) -> World:
    cat = Catalog(state_dir)
    pairs: dict[str, keys.KeyPair] = {}
    for name, region, role, underlay in [
        ("worker-gru", "gru", "worker", "192.0.2.1"),
        ("worker-sjc", "sjc", "worker", "192.0.2.2"),
        ("edge-gru", "gru", "edge", "192.0.2.3"),
        ("gw-gru", "gru", "gateway", "192.0.2.4"),
        ("gw-sjc", "sjc", "gateway", "2001:db8::5"),
    ]:
        cat.register_host(name, region, role, underlay)  # type: ignore[arg-type]
        pairs[name] = keys.generate()
        cat.set_host_key(name, pairs[name].public)
    cat.create_org("acme")
    cat.create_org("globex")
    cat.create_app("web", "acme", config=WEB)
    cat.create_app("db", "globex")
    return World(cat, pairs)
