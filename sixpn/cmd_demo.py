"""`sixpn demo`: the main job, as `make demo` runs it."""

from __future__ import annotations

import argparse

from sixpn import demo
from sixpn.registry import Registry

ERRORS = (demo.DemoError,)


def register(cli: Registry) -> None:
    parser = cli.command("demo", "bring up a three-region lab and walk through sixpn's features", run)
    parser.add_argument("--keep", action="store_true", help="leave the lab running at the end")
    parser.add_argument("--lab", default="demo", metavar="ID", help="lab id (default: demo)")


def run(args: argparse.Namespace) -> int:
    return demo.run(args.lab, keep=args.keep)
