"""A follower in its own OS process: snapshot, then follow, writing each seen version to stdout."""

from __future__ import annotations

import asyncio
import sys

from catalog import Catalog, follow


async def main(state_dir: str, after: int, stop_at: int) -> None:
    catalog = Catalog(state_dir)
    if after < 0:
        snapshot = catalog.snapshot()
        after = snapshot.version
        print(f"snapshot {after} {len(snapshot.machines)}", flush=True)
    async for change in follow(catalog, after, interval=0.005):
        print(f"change {change.version} {change.op} {change.kind} {change.key}", flush=True)
        if change.version >= stop_at:
            return


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
