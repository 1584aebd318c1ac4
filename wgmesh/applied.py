"""`<state>/mesh/<host>.applied`: the catalog version a host's agent has applied (JSON, replaced atomically).

Light on purpose (no pyroute2): the `sixpn wg` commands read it to wait for a gateway.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from catalog.private import private_dir, write_private


def applied_path(state_dir: Path, host: str) -> Path:
    return state_dir / "mesh" / f"{host}.applied"


def read_applied(state_dir: Path, host: str) -> int | None:
    """The catalog version the host's agent has applied, or None if no agent has written one."""
    try:
        return int(json.loads(applied_path(state_dir, host).read_text())["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_applied(state_dir: Path, host: str, version: int, peers: int) -> None:
    path = applied_path(state_dir, host)
    private_dir(path.parent)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    write_private(tmp, json.dumps({"version": version, "peers": peers, "pid": os.getpid(), "time": time.time()}))
    os.replace(tmp, path)  # atomic: a reader sees the old or the new version, never half a file
