"""A writer in its own OS process: creates N machines and prints the versions it was given."""

from __future__ import annotations

import sys

from catalog import Catalog


def main(state_dir: str, count: int) -> None:
    catalog = Catalog(state_dir)
    for _ in range(count):
        machine = catalog.create_machine("web", "worker-gru", state="started")
        print(machine.id, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
