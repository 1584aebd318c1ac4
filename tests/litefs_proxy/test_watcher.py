"""The position watcher over a temp-dir mount: inotify-driven waits, timeouts, the polling fallback."""

from __future__ import annotations

import asyncio
from pathlib import Path

from litefs_proxy.inotify import IN_MODIFY, IN_Q_OVERFLOW, OVERFLOW, parse_events
from litefs_proxy.mountfiles import NO_PRIMARY_LAG_MS, Pos, format_lag, format_pos, write_atomic
from litefs_proxy.watcher import MountWatcher


def set_pos(mount: Path, txid: int) -> None:
    write_atomic(mount / "db-pos", format_pos(Pos(txid, 0)))


def test_parse_events() -> None:
    import struct
    one = struct.pack("iIII", 1, IN_MODIFY, 0, 8) + b"db-pos\0\0"
    two = struct.pack("iIII", -1, IN_Q_OVERFLOW, 0, 0)
    assert list(parse_events(one + two)) == ["db-pos", OVERFLOW]


async def _wait_then_write(mount: Path, watcher: MountWatcher, n: int) -> list[bool]:
    tasks = [asyncio.create_task(watcher.wait_pos(5 + i % 3, 10.0)) for i in range(n)]
    while watcher.waiting < n:
        await asyncio.sleep(0.005)
    set_pos(mount, 4)  # not far enough for anyone
    await asyncio.sleep(0.05)
    assert watcher.waiting == n
    set_pos(mount, 7)
    return await asyncio.gather(*tasks)


def test_inotify_wakes_every_waiter_without_polling(tmp_path: Path) -> None:
    async def main() -> None:
        set_pos(tmp_path, 1)
        watcher = MountWatcher(tmp_path, "db", poll_interval=0)  # no backstop: only inotify can wake them
        watcher.start()
        try:
            assert watcher.notifying
            assert await _wait_then_write(tmp_path, watcher, 1000) == [True] * 1000
            assert watcher.waiting == 0
            assert watcher.wakeups <= 10  # one re-read per change, not per waiter
        finally:
            watcher.close()

    asyncio.run(main())


def test_wait_times_out_and_is_forgotten(tmp_path: Path) -> None:
    async def main() -> None:
        set_pos(tmp_path, 1)
        watcher = MountWatcher(tmp_path, "db", poll_interval=0)
        watcher.start()
        try:
            assert await watcher.wait_pos(2, 0.05) is False
            assert watcher.waiting == 0
            assert await watcher.wait_pos(1, 0.05) is True  # already there
        finally:
            watcher.close()

    asyncio.run(main())


def test_missing_database_does_not_wait(tmp_path: Path) -> None:
    async def main() -> None:
        watcher = MountWatcher(tmp_path, "db", poll_interval=0)
        watcher.start()
        try:
            assert await watcher.wait_pos(99, 5.0) is True
            assert watcher.pos() is None
        finally:
            watcher.close()

    asyncio.run(main())


def test_polling_fallback_without_inotify(tmp_path: Path) -> None:
    async def main() -> None:
        set_pos(tmp_path, 1)
        watcher = MountWatcher(tmp_path, "db", poll_interval=0.02, inotify=False)
        watcher.start()
        try:
            assert not watcher.notifying
            assert await _wait_then_write(tmp_path, watcher, 50) == [True] * 50
        finally:
            watcher.close()

    asyncio.run(main())


def test_inotify_unavailable_falls_back(tmp_path: Path) -> None:
    async def main() -> None:
        watcher = MountWatcher(tmp_path / "absent", "db", poll_interval=0.02)
        watcher.start()
        try:
            assert not watcher.notifying
        finally:
            watcher.close()

    asyncio.run(main())


def test_wait_role_until_primary_known(tmp_path: Path) -> None:
    async def main() -> None:
        write_atomic(tmp_path / ".lag", format_lag(NO_PRIMARY_LAG_MS))
        watcher = MountWatcher(tmp_path, "db", poll_interval=0)
        watcher.start()
        try:
            assert await watcher.wait_role(0.05) == ("unknown", None)
            task = asyncio.create_task(watcher.wait_role(10.0))
            await asyncio.sleep(0.02)
            write_atomic(tmp_path / ".primary", "m1\n")
            assert await task == ("replica", "m1")
            (tmp_path / ".primary").unlink()
            write_atomic(tmp_path / ".lag", format_lag(0))
            assert await watcher.wait_role(1.0) == ("primary", None)
        finally:
            watcher.close()

    asyncio.run(main())


def test_no_polling_while_inotify_sees_the_mount(tmp_path: Path) -> None:
    async def main() -> None:
        set_pos(tmp_path, 1)
        watcher = MountWatcher(tmp_path, "db", poll_interval=0.01)
        watcher.start()
        try:
            assert watcher.notify_reliable
            task = asyncio.create_task(watcher.wait_pos(2, 10.0))
            await asyncio.sleep(0.1)
            assert watcher._poller is None and watcher.wakeups == 0  # ten polls would have happened
            set_pos(tmp_path, 2)
            assert await task is True
        finally:
            watcher.close()

    asyncio.run(main())


def test_fuse_mounts_are_polled_unless_events_are_live(tmp_path: Path) -> None:
    async def main() -> None:
        set_pos(tmp_path, 1)
        watcher = MountWatcher(tmp_path, "db", poll_interval=0.02)
        watcher.start()
        watcher.fuse = True  # as if LiteFS's FUSE mount: inotify would stay silent
        try:
            watcher.set_events_live(True)
            assert watcher.notify_reliable
            task = asyncio.create_task(watcher.wait_pos(2, 10.0))
            await asyncio.sleep(0.05)
            assert watcher._poller is None
            watcher.set_events_live(False)  # the stream dropped: polling takes over
            assert watcher._poller is not None
            set_pos(tmp_path, 2)
            assert await task is True
        finally:
            watcher.close()

    asyncio.run(main())


def test_filesystem_type_from_mountinfo(tmp_path: Path) -> None:
    from litefs_proxy.watcher import filesystem_type

    info = ("22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
            "40 22 0:35 / /litefs rw,nosuid - fuse.litefs litefs rw,user_id=0\n"
            "41 22 0:36 / /my\\040data rw - tmpfs tmpfs rw\n")
    assert filesystem_type(Path("/litefs"), info) == "fuse.litefs"
    assert filesystem_type(Path("/litefs/db-pos"), info) == "fuse.litefs"
    assert filesystem_type(Path("/litefs2"), info) == "ext4"
    assert filesystem_type(Path("/my data/x"), info) == "tmpfs"
    assert filesystem_type(tmp_path) != ""  # the real /proc/self/mountinfo
