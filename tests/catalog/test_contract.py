"""The catalog contract across OS processes: every write seen exactly once, in order, nothing lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from catalog import Catalog

HERE = Path(__file__).parent
WRITERS = 4
PER_WRITER = 50


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    with Catalog(tmp_path / "state") as cat:
        cat.create_org("acme")
        cat.register_host("worker-gru", "gru", "worker", "198.51.100.2")
        cat.create_app("web", "acme")
    return tmp_path / "state"


def _spawn(script: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HERE / script), *map(str, args)], stdout=subprocess.PIPE, text=True
    )


def test_concurrent_writers_and_a_follower_in_other_processes(state_dir: Path) -> None:
    with Catalog(state_dir) as cat:
        start = cat.version()
    total = WRITERS * PER_WRITER
    follower = _spawn("follower_proc.py", state_dir, -1, start + total)
    first = follower.stdout.readline() if follower.stdout else ""
    assert first.startswith(f"snapshot {start} ")
    writers = [_spawn("writer_proc.py", state_dir, PER_WRITER) for _ in range(WRITERS)]
    written: list[str] = []
    for writer in writers:
        out, _ = writer.communicate(timeout=120)
        assert writer.returncode == 0
        written.extend(out.split())
    out, _ = follower.communicate(timeout=60)
    seen = [line.split() for line in out.splitlines()]
    versions = [int(line[1]) for line in seen]
    assert versions == list(range(start + 1, start + total + 1))  # every write, once, in order
    assert sorted(line[4] for line in seen) == sorted(written)
    with Catalog(state_dir) as cat:
        snapshot = cat.snapshot()
    assert len(snapshot.machines) == total  # no row lost or corrupted
    assert len({m.address for m in snapshot.machines.values()}) == total


def test_follower_restarted_from_its_last_version_misses_nothing(state_dir: Path) -> None:
    with Catalog(state_dir) as cat:
        start = cat.version()
        first = _spawn("follower_proc.py", state_dir, start, start + 5)
        for _ in range(5):
            cat.create_machine("web", "worker-gru")
        out1, _ = first.communicate(timeout=60)
        last = int(out1.splitlines()[-1].split()[1])
        # Written while no follower runs: the restarted one must still see them.
        for _ in range(7):
            cat.create_machine("web", "worker-gru")
        second = _spawn("follower_proc.py", state_dir, last, start + 12)
        out2, _ = second.communicate(timeout=60)
    versions = [int(line.split()[1]) for line in (out1 + out2).splitlines()]
    assert versions == list(range(start + 1, start + 13))
