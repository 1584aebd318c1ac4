"""Time from a catalog write in one process to its arrival in a follower in another process.

Prints p50/p99 propagation (target: p99 under 100 ms) and the write rate; the last line is key=value pairs.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import resource
import statistics
import tempfile
import time
from multiprocessing.synchronize import Event
from pathlib import Path

from catalog import Catalog, follow

WRITES = 500


def writer(state_dir: str, count: int, pace: float, ready: Event) -> None:
    catalog = Catalog(state_dir)
    ready.wait()
    for _ in range(count):
        catalog.create_machine("web", "worker-gru", metadata={"t": repr(time.time())})
        if pace:
            time.sleep(pace)


async def follower(state_dir: str, after: int, count: int, ready: Event) -> list[float]:
    catalog = Catalog(state_dir)
    delays: list[float] = []
    ready.set()
    async for change in follow(catalog, after):
        metadata = getattr(change.record, "metadata", {})
        delays.append((time.time() - float(metadata["t"])) * 1000)
        if len(delays) == count:
            return delays
    return delays


def burst_rate(state_dir: str) -> float:
    catalog = Catalog(state_dir)
    started = time.perf_counter()
    for _ in range(WRITES):
        catalog.create_machine("web", "worker-gru")
    return WRITES / (time.perf_counter() - started)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = str(Path(tmp) / "state")
        with Catalog(state) as cat:
            cat.create_org("acme")
            cat.register_host("worker-gru", "gru", "worker", "198.51.100.2")
            cat.create_app("web", "acme")
            start = cat.version()
        ready = mp.Event()
        proc = mp.Process(target=writer, args=(state, WRITES, 0.002, ready))
        proc.start()
        delays = asyncio.run(follower(state, start, WRITES, ready))
        proc.join()
        rate = burst_rate(state)
    delays.sort()
    p50 = statistics.median(delays)
    p99 = delays[int(len(delays) * 0.99) - 1]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"propagation over {WRITES} writes between two processes: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    print(f"write rate (one process, one transaction per write): {rate:.0f} writes/s")
    print(f"p50_ms={p50:.1f} p99_ms={p99:.1f} writes_per_s={rate:.0f} rss_mb={rss_mb:.0f}")


if __name__ == "__main__":
    main()
