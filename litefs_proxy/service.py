"""Running it: the mount stand-in (if the config has a `replicator` section), the app (`--exec`, like LiteFS's
`exec` section) and the proxy, in one process, until SIGTERM/SIGINT or the app exits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
from collections.abc import Callable
from pathlib import Path

from litefs_proxy.config import Config
from litefs_proxy.errors import ConfigError
from litefs_proxy.replicator import PrimaryReplicator, ReplicaReplicator
from litefs_proxy.server import LitefsProxy

log = logging.getLogger("litefs_proxy")


def raise_fd_limit() -> None:
    """A proxy holds two sockets per waiting reader: take the hard limit on open files (Go does the same)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def run(config: Config, *, mount: Path | None = None, exec_cmd: str | None = None, proxy: bool = True,
              stop: asyncio.Event | None = None, on_ready: Callable[[LitefsProxy | None], None] | None = None) -> int:
    mount = mount or config.mount
    if mount is None and config.proxy is not None and config.proxy.mode != "primary-region":
        raise ConfigError("fuse.dir: required (or --mount)")
    raise_fd_limit()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signalled: list[int] = []

    def on_signal(sig: int) -> None:
        signalled.append(sig)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)
    primary: PrimaryReplicator | None = None
    replica: ReplicaReplicator | None = None
    rep = config.replicator
    if rep is not None and mount is not None:
        if rep.role == "primary":
            primary = PrimaryReplicator(mount, rep.db, rep.hostname, rep.addr)
            await primary.start()
        else:
            replica = ReplicaReplicator(mount, rep.db, rep.primary_url, lag_interval=rep.lag_interval,
                                        addr=rep.addr)
            await replica.start()
    child: asyncio.subprocess.Process | None = None
    waiter: asyncio.Task[int] | None = None
    server: LitefsProxy | None = None
    code = 0
    try:
        if exec_cmd:
            child = await asyncio.create_subprocess_shell(exec_cmd)
            waiter = loop.create_task(child.wait())
            waiter.add_done_callback(lambda _t: stop.set())
        if proxy and config.proxy is not None:
            hostname = rep.hostname if rep is not None else ""
            server = LitefsProxy(config.proxy, mount, before_cookie=primary.sync if primary else None,
                                 hostname=hostname)
            await server.start()
        elif proxy:
            log.info("no proxy target set, skipping proxy")  # LiteFS's words (cmd/litefs/mount_linux.go:522)
        if on_ready is not None:
            on_ready(server)
        await stop.wait()
        if waiter is not None and waiter.done() and not signalled:
            # The app ended on its own: so do we, with its status (a signal's as 128+n, like a shell).
            result = waiter.result()
            code = 128 - result if result < 0 else result
            log.info("the app exited with %d", result)
    finally:
        if server is not None:
            await server.close()
        if child is not None and child.returncode is None:
            child.terminate()
            try:
                await asyncio.wait_for(child.wait(), 5)
            except TimeoutError:
                child.kill()
                await child.wait()
        if primary is not None:
            await primary.close()
        if replica is not None:
            await replica.close()
    return code
