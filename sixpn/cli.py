"""`sixpn`: one entry point; each command module registers its verbs. User mistakes become one line on
stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from catalog import CatalogError
from sixpn import commands
from sixpn.context import open_catalog
from sixpn.registry import Registry


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sixpn", description=__doc__)
    parser.add_argument(
        "--state", type=Path, default=None,
        help="catalog state directory (default: $SIXPN_STATE, else /var/lib/sixpn as root)",
    )
    parser.add_argument(
        "--host-config", dest="host_config", type=Path, default=None,
        help="the host's config file (default: $SIXPN_CONFIG); names the state directory and the NATS cluster",
    )
    registry = Registry(parser)
    for module in commands.MODULES:
        module.register(registry)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        result = handler(args)
    except commands.USER_ERRORS as exc:
        print(f"sixpn: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sixpn: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


__all__ = ["CatalogError", "main", "open_catalog"]

if __name__ == "__main__":
    sys.exit(main())
