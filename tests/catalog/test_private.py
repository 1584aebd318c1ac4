"""State and logs only their owner can read (issue 15): 0700 directories, 0600 files, even under umask 0."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from catalog import Catalog
from catalog.private import open_append, private_dir, write_private
from edge_proxy.service import _open_log


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_catalog_state_is_private_under_a_permissive_umask(tmp_path: Path, permissive_umask: None) -> None:
    state = tmp_path / "state"
    with Catalog(state) as cat:
        cat.create_org("acme")
        cat.create_app("web", "acme", config={"env": {"SECRET": "s3cr3t"}})
        files = {p.name: mode(p) for p in state.iterdir()}
    assert mode(state) == 0o700
    assert files == {"catalog.db": 0o600, "catalog.db-wal": 0o600, "catalog.db-shm": 0o600}


def test_an_existing_world_readable_catalog_is_tightened(tmp_path: Path, permissive_umask: None) -> None:
    state = tmp_path / "state"
    with Catalog(state) as cat:
        cat.create_org("acme")
        held = Catalog(state)  # keeps -wal and -shm in place while the first handle closes
    try:
        os.chmod(state, 0o755)
        for p in state.iterdir():
            os.chmod(p, 0o644)
        with Catalog(state) as cat:
            assert cat.org("acme").name == "acme"
            assert mode(state) == 0o700
            assert {p.name: mode(p) for p in state.iterdir()} == {
                "catalog.db": 0o600, "catalog.db-wal": 0o600, "catalog.db-shm": 0o600}
    finally:
        held.close()


def test_logs_and_files_written_by_the_helpers(tmp_path: Path, permissive_umask: None) -> None:
    logs = private_dir(tmp_path / "run" / "logs")
    assert mode(logs) == 0o700
    with open_append(logs / "a.log") as out:
        out.write(b"x\n")
    write_private(logs / "b.txt", "y\n")
    access = _open_log(str(logs / "access.log"))  # the edge's access log (paths, query strings, clients)
    assert access is not None
    access.close()
    (logs / "old.log").write_text("z\n")
    os.chmod(logs / "old.log", 0o644)
    with open_append(logs / "old.log") as out:
        out.write(b"more\n")
    assert {p.name: mode(p) for p in logs.iterdir()} == {
        "a.log": 0o600, "b.txt": 0o600, "access.log": 0o600, "old.log": 0o600}



def test_opening_the_catalog_again_keeps_the_first_connections_locks(tmp_path: Path) -> None:
    """Closing any descriptor of a file drops all of the process's POSIX locks on it: the mode check must not open
    an existing database, or another process closing its catalog would delete the WAL under this one's feet."""
    first = Catalog(tmp_path)
    try:
        first.create_org("acme")
        wal = tmp_path / "catalog.db-wal"
        assert wal.exists()
        Catalog(tmp_path).close()
        other = "import sys; from catalog import Catalog; Catalog(sys.argv[1]).close()"
        subprocess.run([sys.executable, "-c", other, str(tmp_path)], check=True, timeout=60)
        assert wal.exists()
        first.create_org("globex")
    finally:
        first.close()
    with Catalog(tmp_path) as again:
        assert {org.name for org in again.snapshot().orgs.values()} >= {"acme", "globex"}
