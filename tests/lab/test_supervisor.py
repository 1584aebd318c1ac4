"""The supervisor as a real process, supervising `sleep`s (no namespaces, no root needed)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from netns_lab.services import write_spec
from netns_lab.supervisor import Spec, describe_exit
from netns_lab.system import alive, read_pid


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    for sub in ("services", "pids", "logs"):
        (tmp_path / sub).mkdir()
    with open(tmp_path / "logs" / "supervisor.log", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "netns_lab.supervisor", str(tmp_path), "zz"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield tmp_path
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pid_file in (tmp_path / "pids").glob("*.pid"):
            pid = read_pid(pid_file)
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


def pid_of(run_dir: Path, name: str) -> int | None:
    pid = read_pid(run_dir / "pids" / f"{name}.pid")
    return pid if pid and alive(pid) else None


def status(run_dir: Path) -> dict[str, dict[str, object]]:
    try:
        doc: dict[str, dict[str, object]] = json.loads((run_dir / "status.json").read_text())
        return doc
    except (OSError, ValueError):
        return {}


def test_restarts_a_crashed_service_and_reports_it(run_dir: Path) -> None:
    write_spec(run_dir, Spec("svc", ("sleep", "60"), log=str(run_dir / "logs" / "svc.log")))
    wait_for(lambda: pid_of(run_dir, "svc") is not None)
    first = pid_of(run_dir, "svc")
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: pid_of(run_dir, "svc") not in (None, first))
    wait_for(lambda: status(run_dir).get("svc", {}).get("restarts") == 1)
    assert "svc: DIED (killed by SIGKILL)" in (run_dir / "logs" / "supervisor.log").read_text()


def test_restart_never_stays_dead_until_a_new_generation(run_dir: Path) -> None:
    spec = Spec("app", ("sleep", "60"), restart="never", gen=1)
    write_spec(run_dir, spec)
    wait_for(lambda: pid_of(run_dir, "app") is not None)
    pid = pid_of(run_dir, "app")
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: status(run_dir).get("app", {}).get("last_exit") == "killed by SIGKILL")
    time.sleep(0.3)
    assert pid_of(run_dir, "app") is None
    write_spec(run_dir, Spec("app", ("sleep", "60"), restart="never", gen=2))
    wait_for(lambda: pid_of(run_dir, "app") is not None)


def test_removing_a_spec_stops_the_service(run_dir: Path) -> None:
    write_spec(run_dir, Spec("gone", ("sleep", "60")))
    wait_for(lambda: pid_of(run_dir, "gone") is not None)
    pid = pid_of(run_dir, "gone")
    (run_dir / "services" / "gone.json").unlink()
    wait_for(lambda: pid is not None and not alive(pid))
    wait_for(lambda: "gone" not in status(run_dir))


def test_stopping_the_supervisor_stops_its_children(tmp_path: Path) -> None:
    for sub in ("services", "pids"):
        (tmp_path / sub).mkdir()
    write_spec(tmp_path, Spec("child", ("sleep", "60")))
    proc = subprocess.Popen([sys.executable, "-m", "netns_lab.supervisor", str(tmp_path), "zz"],
                            stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: pid_of(tmp_path, "child") is not None)
        child = pid_of(tmp_path, "child")
        proc.terminate()
        proc.wait(10)
        assert child is not None and not alive(child)
    finally:
        proc.kill()
        proc.wait()


def test_describe_exit() -> None:
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(3) == "exited with status 3"
