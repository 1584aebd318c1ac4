"""Run a DnsServer on its own uvloop thread for tests that talk to it with blocking dnspython calls."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import uvloop

from catalog import Catalog
from dns6pn import DnsServer, ServerConfig

T = TypeVar("T")


@contextmanager
def running(state_dir: Path, **config: Any) -> Iterator[DnsServer]:
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="dns6pn-test", daemon=True)
    thread.start()
    catalog = Catalog(state_dir)  # its own connection: the test's writes go through another one
    server: DnsServer | None = None
    try:
        server = DnsServer(catalog, ServerConfig(**config))
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
        yield server
    finally:
        if server is not None:
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        catalog.close()


def eventually(check: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.02) -> T:
    """Poll until `check` returns something truthy; a generous deadline, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        time.sleep(interval)
