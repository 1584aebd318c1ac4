"""A writer in its own OS process racing another for the same hostnames: waits for a start file, then for each
round i creates app `<prefix><i>` in `org` listing `h<i>.example.com`, and prints `won i` or `lost i`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from catalog import Catalog, Conflict


def main(state_dir: str, org: str, prefix: str, rounds: int, go: str) -> None:
    catalog = Catalog(state_dir)
    print("ready", flush=True)
    while not Path(go).exists():
        time.sleep(0.001)
    for i in range(rounds):
        config = {"app": f"{prefix}{i}", "hostnames": [f"h{i}.example.com"]}
        try:
            catalog.create_app(f"{prefix}{i}", org, config=config)
        except Conflict:
            print(f"lost {i}", flush=True)
        else:
            print(f"won {i}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
