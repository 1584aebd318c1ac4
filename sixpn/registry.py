"""How command modules add themselves to the `sixpn` CLI without knowing about each other."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

Handler = Callable[[argparse.Namespace], int | None]


class Registry:
    """Hands out command groups (`sixpn <group> <verb>`) and top-level commands."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser
        self.top = parser.add_subparsers(dest="command", metavar="COMMAND")
        self.groups: dict[str, Any] = {}

    def command(self, name: str, help: str, handler: Handler) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = self.top.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    def verb(self, group: str, name: str, help: str, handler: Handler) -> argparse.ArgumentParser:
        """`sixpn GROUP NAME`; the group is made on first use, so two modules may share it."""
        if group not in self.groups:
            group_parser = self.top.add_parser(group, help=f"{group} commands")
            group_parser.set_defaults(handler=lambda _args, p=group_parser: p.print_help() or 2)
            self.groups[group] = group_parser.add_subparsers(dest="verb", metavar="VERB")
        sub: argparse.ArgumentParser = self.groups[group].add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub
