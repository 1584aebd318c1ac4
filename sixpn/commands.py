"""The command modules of the CLI, and the errors they raise for user mistakes."""

from __future__ import annotations

from types import ModuleType

from catalog import CatalogError
from sixpn import cmd_catalog

MODULES: list[ModuleType] = [cmd_catalog]
USER_ERRORS: tuple[type[Exception], ...] = (CatalogError,)


def _optional(name: str) -> None:
    """Add a command module if it exists yet (parts land one by one)."""
    import importlib

    global USER_ERRORS
    try:
        module = importlib.import_module(f"sixpn.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"sixpn.{name}":
            raise
        return
    MODULES.append(module)
    USER_ERRORS = (*USER_ERRORS, *getattr(module, "ERRORS", ()))


for _name in ("cmd_replica", "cmd_lab", "cmd_wg", "cmd_dns", "cmd_proxy", "cmd_litefs", "cmd_demo"):
    _optional(_name)
