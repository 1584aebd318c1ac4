"""A small catalog for dns6pn's tests: two orgs in their own networks, hosts in three regions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from catalog import Catalog, Machine, Peer


@dataclass
class World:
    catalog: Catalog
    web_gru: Machine  # acme/web, started, gru, metadata role=primary
    web_ams: Machine  # acme/web, started, ams, process group worker
    web_sjc: Machine  # acme/web, started, sjc
    web_stopped: Machine  # acme/web, stopped, gru
    web_console: Machine  # acme/web, started, skip_dns
    db: Machine  # acme/db, started, ams
    globex: Machine  # globex/api, started, gru
    alice: Peer  # acme's laptop peer on the gru gateway
    interactive: Peer  # acme, named interactive-*: resolvable, not listed

    @property
    def acme_source(self) -> str:
        return self.web_gru.address


def build(state_dir: Path) -> World:
    cat = Catalog(state_dir)
    cat.create_org("acme")
    cat.create_org("globex")
    cat.register_host("worker-gru", "gru", "worker", "192.0.2.1")
    cat.register_host("worker-ams", "ams", "worker", "192.0.2.2")
    cat.register_host("worker-sjc", "sjc", "worker", "192.0.2.3")
    cat.register_host("gw-gru", "gru", "gateway", "192.0.2.4")
    cat.create_app("web", "acme")
    cat.create_app("db", "acme")
    cat.create_app("api", "globex")
    return World(
        catalog=cat,
        web_gru=cat.create_machine("web", "worker-gru", "0000000000000a", "started", metadata={"role": "primary"}),
        web_ams=cat.create_machine("web", "worker-ams", "0000000000000b", "started", process_group="worker"),
        web_sjc=cat.create_machine("web", "worker-sjc", "0000000000000c", "started"),
        web_stopped=cat.create_machine("web", "worker-gru", "0000000000000d", "stopped"),
        web_console=cat.create_machine("web", "worker-gru", "0000000000000e", "started", skip_dns=True),
        db=cat.create_machine("db", "worker-ams", "0000000000000f", "started"),
        globex=cat.create_machine("api", "worker-gru", "00000000000010", "started"),
        alice=cat.create_peer("acme", "alice", "gw-gru", "A" * 43 + "="),
        interactive=cat.create_peer("acme", "interactive-x1", "gw-gru", "B" * 43 + "="),
    )
