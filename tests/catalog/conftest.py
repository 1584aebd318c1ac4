"""The catalog contract runs against both catalogs: the embedded one, and the replicated one (a replica
writing through a nats-server started for the test)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from catalog import Catalog
from catalog.fleetconfig import CatalogConfig, HostConfig
from catalog.replicated import ReplicatedCatalog
from tests.natsserver import NatsServer, nats_server

MakeCatalog = Callable[[Path], Catalog]


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    with nats_server(tmp_path / "nats") as server:
        yield server


def host_config(server: NatsServer, state: Path, name: str = "operator", role: str = "operator") -> HostConfig:
    return HostConfig(name=name, role=role, region="gru", underlay="", state_dir=state,
                      catalog=CatalogConfig(mode="replicated", nats=(server.url,)))


@pytest.fixture(params=["embedded", "replicated"])
def make_catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeCatalog]:
    """Opens a catalog handle on a state directory; for the replicated kind each directory is a replica of
    one stream (two directories = two hosts)."""
    if request.param == "embedded":
        yield Catalog
        return
    with nats_server(tmp_path / "nats") as server:
        made: list[ReplicatedCatalog] = []

        def make(state: Path) -> Catalog:
            catalog = ReplicatedCatalog(host_config(server, state), fresh_reads=True)
            if not made:
                catalog.init_stream(1)
            made.append(catalog)
            return catalog

        yield make
        for catalog in made:
            catalog.link.close()
