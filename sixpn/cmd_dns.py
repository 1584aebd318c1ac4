"""`sixpn dns serve`: run the `.internal` DNS server (dns6pn) on its own."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

import uvloop
from dnslib import DNSRecord

from catalog import Catalog
from dns6pn import DnsError, DnsServer, Engine, Forward, ServerConfig, parse_address
from dns6pn.config import from_toml, override
from sixpn.context import state_dir
from sixpn.registry import Registry

ERRORS = (DnsError,)


def register(cli: Registry) -> None:
    serve = cli.verb("dns", "serve", "run the .internal DNS server, following the catalog", dns_serve)
    serve.add_argument("--host", help="the catalog host this runs on: a worker listens on [fdaa::3]:53, "
                       "a gateway on [<net>::3]:53 for each network with a peer there")
    serve.add_argument("--listen", action="append", metavar="ADDR:PORT",
                       help="listen here (UDP and TCP) instead; repeatable; [v6]:port or v4:port")
    serve.add_argument("--upstream", action="append", metavar="ADDR:PORT",
                       help="resolver for names outside .internal; repeatable (none: REFUSED)")
    serve.add_argument("--ttl", type=int, help="TTL of answers in seconds (default 5)")
    serve.add_argument("--max-udp", type=int, help="largest UDP reply in bytes (default 1232)")
    serve.add_argument("--source-override", metavar="6PN_ADDR",
                       help="treat every query as sent from this 6PN address (tests over loopback)")
    serve.add_argument("--config", type=Path, help="TOML file with these settings (flags win)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    query = cli.verb("dns", "query", "answer one question from the catalog as dns6pn would (no network)",
                     dns_query)
    query.add_argument("name")
    query.add_argument("type", nargs="?", default="AAAA")
    query.add_argument("--from", dest="source", required=True, metavar="WHO",
                       help="the asker: a 6PN address, a machine id or a WireGuard peer name")


def _config(args: argparse.Namespace) -> ServerConfig:
    base = from_toml(args.config) if args.config else ServerConfig()
    return override(
        base,
        host=args.host,
        listen=tuple(parse_address(a) for a in args.listen) if args.listen else None,
        upstreams=tuple(parse_address(a) for a in args.upstream) if args.upstream else None,
        ttl=args.ttl,
        max_udp=args.max_udp,
        source_override=args.source_override,
    )


def dns_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = _config(args)
    catalog = Catalog(state_dir(args))
    try:
        uvloop.run(_serve(catalog, config))
    finally:
        catalog.close()
    return 0


def dns_query(args: argparse.Namespace) -> int:
    with Catalog(state_dir(args)) as catalog:
        state = catalog.snapshot()
    source = args.source
    if source in state.machines:
        source = state.machines[source].address
    elif source in state.peers:
        source = state.peers[source].address
    try:
        question = DNSRecord.question(args.name, args.type.upper())
    except Exception as exc:  # dnslib raises several types for a bad name or type
        raise DnsError(f"bad question {args.name} {args.type}: {exc}") from None
    reply = Engine(state, forwarding=True).handle(question.pack(), source, tcp=True)
    if isinstance(reply, Forward):
        print(f"{args.name} is outside .internal: dns6pn forwards it to its upstreams")
        return 0
    if reply is None:
        raise DnsError("no reply")
    print(DNSRecord.parse(reply))
    return 0


async def _serve(catalog: Catalog, config: ServerConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with DnsServer(catalog, config) as server:
        logging.getLogger("dns6pn").info("serving %s", " ".join(f"[{h}]:{p}" for h, p in server.addresses) or
                                         "(no addresses yet)")
        await stop.wait()
