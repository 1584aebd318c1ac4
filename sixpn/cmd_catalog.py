"""`sixpn orgs|apps|machines|regions`: the catalog's own verbs."""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from catalog import Catalog, ConfigError, default_regions
from sixpn.context import open_catalog
from sixpn.output import emit
from sixpn.registry import Registry


def _catalog(args: argparse.Namespace) -> Catalog:
    return open_catalog(args)


def register(cli: Registry) -> None:
    create = cli.verb("orgs", "create", "create an organization and its default 6PN network", orgs_create)
    create.add_argument("name")
    _json(cli.verb("orgs", "list", "list organizations", orgs_list))

    app = cli.verb("apps", "create", "create an app in an organization", apps_create)
    app.add_argument("name")
    app.add_argument("--org", required=True)
    app.add_argument("--network", help="a named network of the org (made if new); default: the org's")
    app.add_argument("--config", type=Path, help="fly.toml-shaped service config")
    _json(cli.verb("apps", "list", "list apps", apps_list))

    machines = _json(cli.verb("machines", "list", "list machines", machines_list))
    machines.add_argument("--app")
    _json(cli.command("regions", "list regions and their RTTs from each other", regions))


def _json(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--json", action="store_true", help="print JSON")
    return parser


def orgs_create(args: argparse.Namespace) -> None:
    with _catalog(args) as cat:
        org = cat.create_org(args.name)
        net = cat.network(org.network)
    print(f"created org {org.name} with network {net.name} ({net.prefix})")


def orgs_list(args: argparse.Namespace) -> None:
    with _catalog(args) as cat:
        state = cat.snapshot()
    rows = []
    for org in sorted(state.orgs.values(), key=lambda o: o.name):
        nets = [n for n in state.networks.values() if n.org == org.name]
        rows.append({
            "name": org.name, "network": org.network,
            "networks": {n.name: str(n.prefix) for n in sorted(nets, key=lambda n: n.net_id)},
        })
    emit(rows, ["name", "network", "networks"], args.json)


def _load_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def apps_create(args: argparse.Namespace) -> None:
    config = _load_config(args.config)
    with _catalog(args) as cat:
        app = cat.create_app(args.name, args.org, args.network, config)
        net = cat.network(app.network)
    print(f"created app {app.name} in org {app.org}, network {net.name} ({net.prefix})")


def apps_list(args: argparse.Namespace) -> None:
    with _catalog(args) as cat:
        state = cat.snapshot()
    rows = []
    for app in sorted(state.apps.values(), key=lambda a: a.name):
        service = app.config.http_service
        rows.append({
            "name": app.name, "org": app.org, "network": app.network,
            "internal_port": service.internal_port if service else None,
            "machines": len(state.machines_of(app.name)),
        })
    emit(rows, ["name", "org", "network", "internal_port", "machines"], args.json)


def machines_list(args: argparse.Namespace) -> None:
    with _catalog(args) as cat:
        state = cat.snapshot()
        if args.app:
            cat.app(args.app)
    machines = sorted(state.machines.values(), key=lambda m: (m.app, m.region, m.id))
    rows = [asdict(m) for m in machines if not args.app or m.app == args.app]
    emit(rows, ["id", "app", "region", "host", "desired", "state", "restarts", "exit_code", "health", "address",
                "process_group"], args.json)


def regions(args: argparse.Namespace) -> None:
    table = default_regions()
    codes = sorted(table.regions)
    rows = [
        {"code": r.code, "name": r.name, **{f"rtt_{c}": table.rtt(r.code, c) for c in codes}}
        for r in (table.regions[c] for c in codes)
    ]
    emit(rows, ["code", "name", *(f"rtt_{c}" for c in codes)], args.json)

