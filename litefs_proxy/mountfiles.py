"""The LiteFS mount's control files: formats (pure) and tiny readers.

- `.primary`   `<hostname>\\n`, only on a replica that knows its primary (fuse/primary_node.go).
- `<db>-pos`   `<txid %016x>/<post-apply checksum %016x>\\n`, 34 bytes (fuse/pos_node.go).
- `.lag`       `%+010d\\n` milliseconds since the primary was last heard from, 11 bytes (Go counts the sign in
               the width, so the primary's is `+000000000`), `+2147483647` when no primary was ever heard from
               (fuse/lag_node.go). The parser also takes the spec's 10-zero spelling.

With only files to go on, "I am the primary" and "no primary known" both mean `.primary` is absent; `.lag`
tells them apart (0 on the primary). A mount without `.lag` (LiteFS before 0.5) is taken to be the primary.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from litefs_proxy.errors import MountError

PRIMARY_FILE = ".primary"
LAG_FILE = ".lag"
POS_SUFFIX = "-pos"
NO_PRIMARY_LAG_MS = 2**31 - 1
_POS = re.compile(r"([0-9a-f]{16})/([0-9a-f]{16})\n?")
_LAG = re.compile(r"[+-][0-9]{9,}\n?")

Role = Literal["primary", "replica", "unknown"]


@dataclass(frozen=True)
class Pos:
    txid: int
    checksum: int


def pos_name(db: str) -> str:
    return db + POS_SUFFIX


def format_pos(pos: Pos) -> str:
    return f"{pos.txid:016x}/{pos.checksum:016x}\n"


def parse_pos(text: str) -> Pos:
    match = _POS.fullmatch(text)
    if match is None:
        raise MountError(f"position file: expected <16 hex>/<16 hex>, got {text[:40]!r}")
    return Pos(int(match.group(1), 16), int(match.group(2), 16))


def format_lag(ms: int) -> str:
    return f"{ms:+010d}\n"  # Go: %+010d


def parse_lag(text: str) -> int:
    if _LAG.fullmatch(text) is None:
        raise MountError(f".lag: expected %+010d milliseconds, got {text[:20]!r}")
    return int(text.strip())


def format_primary(hostname: str) -> str:
    return hostname + "\n"


def parse_primary(text: str) -> str:
    hostname = text.rstrip("\n")
    if not hostname or "\n" in hostname or any(c.isspace() for c in hostname):
        raise MountError(f".primary: expected one hostname, got {text[:40]!r}")
    return hostname


def role_of(primary: str | None, lag_ms: int | None) -> Role:
    """Who this node is, from `.primary` (hostname or absent) and `.lag` (ms or absent)."""
    if primary is not None:
        return "replica"
    if lag_ms is None or lag_ms == 0:
        return "primary"
    return "unknown"


def _read(path: Path) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(256)
    except (FileNotFoundError, NotADirectoryError):
        return None


def read_pos(mount: Path, db: str) -> Pos | None:
    """The database's position, or None when the database does not exist (yet)."""
    text = _read(mount / pos_name(db))
    return None if text is None else parse_pos(text)


def read_primary(mount: Path) -> str | None:
    text = _read(mount / PRIMARY_FILE)
    return None if text is None else parse_primary(text)


def read_lag(mount: Path) -> int | None:
    text = _read(mount / LAG_FILE)
    return None if text is None else parse_lag(text)


def read_role(mount: Path) -> tuple[Role, str | None]:
    primary = read_primary(mount)
    return role_of(primary, None if primary is not None else read_lag(mount)), primary


def write_atomic(path: Path, text: str) -> None:
    """Write by rename, so a reader never sees half a file (and inotify reports one IN_MOVED_TO)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="ascii") as f:
        f.write(text)
    os.replace(tmp, path)
