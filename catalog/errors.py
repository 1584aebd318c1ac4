"""The catalog's one base exception and its kinds."""

from __future__ import annotations


class CatalogError(Exception):
    """Base of every error the catalog raises; its message is fit for a user."""


class NotFound(CatalogError):
    """A named row (org, app, host, machine, peer, region) does not exist."""


class Conflict(CatalogError):
    """A write would duplicate a unique name, id or address."""


class InvalidWrite(CatalogError):
    """A write carries a malformed value (name, id, state, key)."""


class ConfigError(CatalogError):
    """An app config (fly.toml-shaped) is malformed; the message names the key's path."""


class ClusterUnavailable(CatalogError):
    """The replicated catalog's NATS cluster cannot be reached, or has no quorum: nothing was written."""


class WriteConflict(CatalogError):
    """Another writer published first (compare-and-set failed): the write is validated again and retried."""
