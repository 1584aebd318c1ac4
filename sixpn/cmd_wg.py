"""`sixpn mesh agent` (the per-host WireGuard mesh service) and `sixpn wg create|list|remove|reset`
(laptop peers, shaped like `fly wireguard ...`)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from catalog import Catalog
from sixpn.context import open_catalog, state_dir
from sixpn.output import emit
from sixpn.registry import Registry
from wgmesh import MeshError
from wgmesh.desired import WG_PORT
from wgmesh.peers import Created, create, list_peers, remove, reset

ERRORS = (MeshError,)


def register(cli: Registry) -> None:
    agent = cli.verb("mesh", "agent", "run the WireGuard mesh agent of one host (inside its namespace)", mesh_agent)
    agent.add_argument("--host", required=True, help="this host's name in the catalog")
    agent.add_argument("--interface", required=True, help="WireGuard interface name, unique on the machine")
    agent.add_argument("--key-file", type=Path, required=True, help="host private key (made 0600 if missing)")
    agent.add_argument("--listen-port", type=int, default=WG_PORT)
    agent.add_argument("--resync", type=float, default=10.0, help="seconds between drift-healing reconciles")
    agent.add_argument("--wg-log", type=Path, help="file for wireguard-go's own output")
    agent.add_argument("--userspace", action="store_true", help="use wireguard-go even with the kernel module")

    status = cli.verb("mesh", "status", "per host: the catalog version its mesh agent has applied", mesh_status)
    status.add_argument("--json", action="store_true", help="print JSON")

    made = cli.verb("wg", "create", "register a laptop peer on a gateway and print its wg-quick config", wg_create)
    made.add_argument("org")
    made.add_argument("region", nargs="?", help="gateway region (default: the nearest gateway)")
    made.add_argument("name", nargs="?", help="peer name (default: ORG-<random>)")
    made.add_argument("file", nargs="?", type=Path, help="write the config here (0600, never overwritten)")
    made.add_argument("--network", help="a named network of the org (default: the org's)")
    made.add_argument("--public-key", help="use this public key; you keep the private key")
    made.add_argument("--qr", action="store_true", help="also print the config as a terminal QR code")
    made.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the gateway to apply")

    listed = cli.verb("wg", "list", "list an org's laptop peers", wg_list)
    listed.add_argument("org")
    listed.add_argument("--json", action="store_true", help="print JSON")

    gone = cli.verb("wg", "remove", "remove a laptop peer (gone from the gateway before this returns)", wg_remove)
    gone.add_argument("org")
    gone.add_argument("name")
    gone.add_argument("--wait", type=float, default=10.0)

    again = cli.verb("wg", "reset", "give a laptop peer new keys; the old config stops working", wg_reset)
    again.add_argument("org")
    again.add_argument("name")
    again.add_argument("file", nargs="?", type=Path, help="write the new config here (0600, never overwritten)")
    again.add_argument("--public-key", help="use this public key; you keep the private key")
    again.add_argument("--qr", action="store_true")
    again.add_argument("--wait", type=float, default=10.0)


def _catalog(args: argparse.Namespace) -> Catalog:
    return open_catalog(args)


def mesh_agent(args: argparse.Namespace) -> None:
    from wgmesh.agent import AgentConfig, run_agent  # pyroute2 is loaded only by the agent

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s " + args.host + ": %(message)s")
    run_agent(AgentConfig(
        state_dir=state_dir(args), host=args.host, ifname=args.interface,
        key_file=args.key_file, listen_port=args.listen_port, resync=args.resync, wg_log=args.wg_log,
        userspace=args.userspace,
    ), open_catalog(args))


def mesh_status(args: argparse.Namespace) -> None:
    with _catalog(args) as cat:
        state = cat.snapshot()
    rows = []
    for host in sorted(state.hosts.values(), key=lambda h: h.host_id):
        # What the host's agent reported in the catalog (at start and after each change to its laptop peers),
        # so the same from any host of the fleet.
        rows.append({"host": host.name, "role": host.role, "region": host.region,
                     "mesh_address": str(host.mesh_address), "keyed": bool(host.public_key),
                     "applied": host.mesh_applied or None})
    emit(rows, ["host", "role", "region", "mesh_address", "keyed", "applied"], args.json)


def _print_config(made: Created, file: Path | None, qr: bool) -> None:
    if file is None:
        sys.stdout.write(made.config)
    else:
        print(f"wrote {file} (peer {made.peer.name}, {made.peer.address} via {made.gateway.name})")
    if qr:
        import segno  # only for --qr

        segno.make(made.config, error="l").terminal(out=sys.stdout, compact=True)
    if not made.applied:
        print(f"sixpn: warning: gateway {made.gateway.name} has not applied the peer yet", file=sys.stderr)


def wg_create(args: argparse.Namespace) -> None:
    with _catalog(args) as cat:
        made = create(cat, args.org, args.region, args.name, args.file, args.network, args.public_key, args.wait)
    _print_config(made, args.file, args.qr)


def wg_list(args: argparse.Namespace) -> None:
    with _catalog(args) as cat:
        peers = list_peers(cat, args.org)
    rows = [
        {"name": p.name, "region": h.region if h else None, "gateway": p.host, "network": p.network,
         "address": p.address, "public_key": p.public_key}
        for p, h in peers
    ]
    emit(rows, ["name", "region", "gateway", "network", "address", "public_key"], args.json)


def wg_remove(args: argparse.Namespace) -> None:
    with _catalog(args) as cat:
        peer = remove(cat, args.org, args.name, args.wait)
    print(f"removed peer {peer.name} from {peer.host}")


def wg_reset(args: argparse.Namespace) -> None:
    with _catalog(args) as cat:
        made = reset(cat, args.org, args.name, args.file, args.public_key, args.wait)
    _print_config(made, args.file, args.qr)
