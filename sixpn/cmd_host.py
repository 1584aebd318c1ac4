"""`sixpn host agent`: the host agent of a worker (hostagent/), which owns the machines placed on it."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from hostagent.errors import HostAgentError
from hostagent.sandbox import SETPRIV
from sixpn.context import open_catalog
from sixpn.registry import Registry

if TYPE_CHECKING:
    from hostagent.agent import Agent

ERRORS = (HostAgentError,)
DEFAULT_RUN_DIR = Path("/run/sixpn/agent")


def register(cli: Registry) -> None:
    agent = cli.verb("host", "agent", "run the host agent: build, start, stop, confine, restart, check and report "
                     "the machines placed on this host", host_agent)
    agent.add_argument("--host", required=True, help="this host's name in the catalog (a worker)")
    agent.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR,
                       help=f"the agent's state files, 0700 (default {DEFAULT_RUN_DIR})")
    agent.add_argument("--netns-prefix", default="sixpn", help="machine namespaces are PREFIX-m-<id> (default sixpn)")
    agent.add_argument("--log-dir", type=Path, help="the apps' logs, <id>.app.log (default RUN_DIR/logs)")
    agent.add_argument("--share", action="append", default=[], metavar="DIR",
                       help="a host directory every machine sees read-write at the same path (repeatable)")
    agent.add_argument("--ro-bind", action="append", default=[], metavar="DIR",
                       help="a host directory every machine sees read-only at the same path (repeatable)")


def check_tools() -> None:
    """What the agent runs: iproute2 for namespaces, bubblewrap and util-linux's setpriv for the sandbox."""
    missing = [name for name, path in (("iproute2 (ip)", shutil.which("ip")), ("bubblewrap (bwrap)", shutil.which(
        "bwrap")), ("util-linux (setpriv)", SETPRIV if os.access(SETPRIV, os.X_OK) else None)) if path is None]
    if missing:
        raise HostAgentError(f"the host agent needs {', '.join(missing)} (apt-get install bubblewrap util-linux "
                             "iproute2)")


def host_agent(args: argparse.Namespace) -> None:
    from hostagent.agent import Agent, Options  # the agent's imports only in the agent's process

    check_tools()
    options = Options(host=args.host, run_dir=args.run_dir, netns_prefix=args.netns_prefix, log_dir=args.log_dir,
                      shares=tuple(args.share), ro_binds=tuple(args.ro_bind))
    with open_catalog(args) as catalog:
        host = catalog.host(args.host)
        if host.role != "worker":
            raise HostAgentError(f"host {args.host!r} is a {host.role}: machines run on workers")
        asyncio.run(_serve(Agent(catalog, options)))


async def _serve(agent: Agent) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)  # the agent leaves; its machines keep running
    await agent.serve(stop)
