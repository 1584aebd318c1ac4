"""Files that only their owner may read: the catalog (every org's config and `[env]`), logs (paths, query strings,
client addresses), keys. Directories 0700, files 0600, whatever the process's umask; an existing directory or file
with wider modes (made before, or by a permissive umask) is tightened when we own it.

The services and the CLI use these wherever they create state or logs; secrets themselves are written by
`wgmesh.keys.write_secret` (created 0600 from the first byte).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import BinaryIO, TextIO

DIR_MODE = 0o700
FILE_MODE = 0o600


def _tighten(path: Path | int, mode: int) -> None:
    st = os.stat(path)
    if stat.S_IMODE(st.st_mode) & ~mode and st.st_uid == os.geteuid():
        os.chmod(path, mode)


def tighten(path: str | Path) -> None:
    """An existing file made 0600 if it is wider and ours; a missing one is left missing."""
    with contextlib.suppress(FileNotFoundError):
        _tighten(Path(path), FILE_MODE)


def private_dir(path: str | Path) -> Path:
    """`path` (and missing parents, which keep the umask's modes) created; `path` itself 0700."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    _tighten(path, DIR_MODE)
    return path


def private_file(path: str | Path) -> Path:
    """`path` exists and is 0600 (created empty if missing): for files another library then opens, such as
    SQLite's database, whose `-wal` and `-shm` files SQLite creates with the database file's mode."""
    path = Path(path)
    # Only a file we create is opened: closing any descriptor of a file drops every POSIX lock this process
    # holds on it, so opening an existing database here would silently release the locks of the process's
    # open SQLite connections (and let another connection delete its -wal and -shm under them).
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE))
    _tighten(path, FILE_MODE)
    return path


def _open(path: str | Path, flags: int) -> int:
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        _tighten(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_append(path: str | Path) -> BinaryIO:
    """A log opened for appending, created 0600 (tightened if it already existed wider)."""
    return os.fdopen(_open(path, os.O_WRONLY | os.O_APPEND), "ab")


def open_append_text(path: str | Path) -> TextIO:
    """`open_append` as a line-buffered text file."""
    return os.fdopen(_open(path, os.O_WRONLY | os.O_APPEND), "a", buffering=1)


def write_private(path: str | Path, text: str) -> None:
    """Replace `path`'s contents with `text`, the file 0600."""
    with os.fdopen(_open(path, os.O_WRONLY | os.O_TRUNC), "w") as out:
        out.write(text)
