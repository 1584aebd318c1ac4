"""`sixpn catalog init|replicate|status`: the replicated catalog's own verbs (a host config is required)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal

from catalog import CatalogError
from catalog.fleetconfig import HostConfig
from sixpn.context import host_config
from sixpn.registry import Registry


def register(cli: Registry) -> None:
    init = cli.verb("catalog", "init", "create the catalog's stream on the NATS cluster (operator)", catalog_init)
    init.add_argument("--replicas", type=int, default=3, help="copies of the stream (default 3; 1 for one server)")
    replicate = cli.verb("catalog", "replicate", "keep this host's replica current from the cluster", catalog_replicate)
    replicate.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    status = cli.verb("catalog", "status", "this host's replica: its sequence, the stream's, the lag", catalog_status)
    status.add_argument("--json", action="store_true", help="print JSON")


def _replicated(args: argparse.Namespace) -> HostConfig:
    config = host_config(args)
    if config is None or not config.catalog.replicated:
        raise CatalogError("this needs a host config with [catalog] mode = \"replicated\" "
                           "(--host-config FILE or $SIXPN_CONFIG)")
    return config


def catalog_init(args: argparse.Namespace) -> None:
    if args.replicas < 1 or args.replicas > 5:
        raise CatalogError("--replicas must be 1 to 5")
    from catalog.replicated import ReplicatedCatalog  # nats-py (and aiohttp under it): only where used

    with ReplicatedCatalog(_replicated(args)) as cat:
        cat.init_stream(args.replicas)
        print(f"catalog stream {cat.config.catalog.stream} ready (replicas={args.replicas}), "
              f"at seq {cat.link.last_seq()}")


def catalog_status(args: argparse.Namespace) -> None:
    from catalog.replicated import ReplicatedCatalog

    config = _replicated(args)
    with ReplicatedCatalog(config, fresh_reads=False) as cat:
        seq = cat.replica_seq()
        outbox = int(cat.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        try:
            last: int | None = cat.link.last_seq()
            error = ""
        except CatalogError as exc:
            last, error = None, str(exc)
    row = {"host": config.name, "seq": seq, "stream_seq": last, "lag": None if last is None else last - seq,
           "outbox": outbox, "error": error}
    if args.json:
        print(json.dumps(row))
    else:
        lag = "unknown (cluster unreachable)" if last is None else str(last - seq)
        print(f"{config.name}: replica at {seq}, stream at {last if last is not None else '?'}, lag {lag}, "
              f"{outbox} report(s) waiting to be published")


def catalog_replicate(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import uvloop

    from catalog.replicator import Replicator

    config = _replicated(args)

    async def main() -> None:
        replicator = Replicator(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(replicator.run())
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        for t in (task, waiter):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        logging.getLogger("sixpn.catalog.replicator").info("stopped: %r", replicator)
        await replicator.close()

    uvloop.run(main())
    return 0
