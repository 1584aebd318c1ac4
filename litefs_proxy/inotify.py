"""Linux inotify(7) through ctypes: a non-blocking fd for a directory, and a parser for its events."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from collections.abc import Iterator

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
#: Everything that can change what a reader of a small control file sees.
FILE_CHANGES = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then name[len]
OVERFLOW = "\0overflow"


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def watch_directory(path: str, mask: int = FILE_CHANGES) -> int:
    """An inotify fd (non-blocking, close-on-exec) watching `path`; OSError when unavailable."""
    libc = _libc()
    fd = int(libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"inotify_init1: {os.strerror(err)}")
    if libc.inotify_add_watch(fd, os.fsencode(path), mask) < 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
    return fd


def parse_events(buf: bytes) -> Iterator[str]:
    """The file names in a read() of inotify events; `OVERFLOW` when the kernel dropped some."""
    offset = 0
    while offset + _HEADER.size <= len(buf):
        _wd, mask, _cookie, length = _HEADER.unpack_from(buf, offset)
        offset += _HEADER.size
        name = buf[offset:offset + length].split(b"\0", 1)[0]
        offset += length
        if mask & IN_Q_OVERFLOW:
            yield OVERFLOW
        elif name:
            yield os.fsdecode(name)


def read_names(fd: int) -> set[str]:
    names: set[str] = set()
    while True:
        try:
            buf = os.read(fd, 64 * 1024)
        except BlockingIOError:
            return names
        if not buf:
            return names
        names.update(parse_events(buf))
