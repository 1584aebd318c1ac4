"""A lab's run directory is its owner's alone (issue 15): directories 0700; logs, keys and the catalog 0600,
even when `lab up` runs under umask 0. Checked with `stat` on what a running lab (with its host services) wrote."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from netns_lab.lab import Lab
from tests.conftest import lab_id

pytestmark = pytest.mark.lab

P = lab_id("p")


def stat_modes(paths: list[Path]) -> dict[str, int]:
    """Modes as the stat tool reports them (not this process's own view)."""
    out = subprocess.run(["stat", "-c", "%a %n", *map(str, paths)], capture_output=True, text=True, check=True)
    return {name: int(mode, 8) for mode, name in (line.split(" ", 1) for line in out.stdout.splitlines())}


def test_run_dir_logs_keys_and_catalog_are_private() -> None:
    old = os.umask(0)
    try:
        lab = Lab.up(None, P, wait_ready=True, owner_pid=os.getpid())
    finally:
        os.umask(old)
    try:
        run = lab.run_dir
        share = run / "share"  # the machines' shared files: 1777 on purpose, bind-mounted into each sandbox
        dirs = [run, *(p for p in run.rglob("*") if p.is_dir() and share not in (p, *p.parents))]
        logs = sorted(lab.logs_dir.glob("*.log"))
        keys = sorted((run / "keys").glob("*"))
        # Every host's replica and the operator's (a replicated lab), or the one shared catalog (embedded).
        states = [p for p in run.rglob("state") if p.is_dir() and share not in p.parents]
        db = sorted(p for state in states for p in state.glob("catalog.db*"))
        others = sorted(p for state in states for p in state.rglob("*") if p.is_file() and p not in db)
        hosts = len(lab.plan.hosts())
        assert len(logs) >= 5 and keys and len(db) >= 3 * (hosts if lab.replicated else 1), (logs, keys, db)
        modes = stat_modes([*dirs, *logs, *keys, *db, *others])
        wide = {name: oct(m) for name, m in modes.items()
                if m != (0o700 if Path(name).is_dir() else 0o600)}
        assert wide == {}
        # Whatever else is in the run directory is unreachable for others through its 0700 directories.
        assert stat.S_IMODE(run.stat().st_mode) == 0o700
        assert stat.S_IMODE(share.stat().st_mode) == 0o1777
    finally:
        Lab.down(P)
