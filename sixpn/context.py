"""What every command opens: the host's config (`--host-config` / `$SIXPN_CONFIG`) and the catalog it names.

With a host config, the state directory is the config's and a replicated catalog writes through NATS;
without one, `--state` / `$SIXPN_STATE` names an embedded catalog, as on a single host."""

from __future__ import annotations

import argparse
from pathlib import Path

from catalog import Catalog, default_state_dir
from catalog.fleetconfig import HostConfig, config_from_env, load_host_config


def host_config(args: argparse.Namespace) -> HostConfig | None:
    path = getattr(args, "host_config", None)
    if path is not None:
        return load_host_config(path)
    return config_from_env()


def state_dir(args: argparse.Namespace) -> Path:
    if getattr(args, "state", None):
        return Path(args.state)
    config = host_config(args)
    return config.state_dir if config is not None else default_state_dir()


def open_catalog(args: argparse.Namespace) -> Catalog:
    """The catalog for this command: the replica of the host's config (writes go through NATS), or the
    embedded catalog in `--state`."""
    config = host_config(args)
    if config is not None and config.catalog.replicated and not getattr(args, "state", None):
        from catalog.replicated import ReplicatedCatalog

        return ReplicatedCatalog(config)
    return Catalog(state_dir(args))
