"""The replicated catalog (being built): a local replica written through NATS JetStream."""

from __future__ import annotations

from catalog.errors import CatalogError
from catalog.fleetconfig import HostConfig
from catalog.store import Catalog


class ReplicatedCatalog(Catalog):
    def __init__(self, config: HostConfig) -> None:
        raise CatalogError("the replicated catalog is not built yet")
