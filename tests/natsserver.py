"""nats-server for tests: a JetStream server on a random loopback port, in a temporary directory, always
stopped (SIGKILL after a grace) when the test ends, even on failure."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

NATS_SERVER = Path(sys.executable).with_name("nats-server")


@dataclass
class NatsServer:
    proc: subprocess.Popen[bytes]
    url: str
    work: Path

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def nats_server(work: Path, extra: tuple[str, ...] = ()) -> Iterator[NatsServer]:
    work.mkdir(parents=True, exist_ok=True)
    ports = work / "ports"
    ports.mkdir(exist_ok=True)
    log = open(work / "nats.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([str(NATS_SERVER), "-js", "-sd", str(work / "js"), "-p", "-1", "-a", "127.0.0.1",
                             "--ports_file_dir", str(ports), *extra], stdout=log, stderr=log)
    log.close()
    server = NatsServer(proc, "", work)
    try:
        deadline = time.monotonic() + 10
        while not server.url:
            found = list(ports.glob("*.ports"))
            if found:
                with contextlib.suppress(ValueError):
                    server.url = json.loads(found[0].read_text())["nats"][0]
            if proc.poll() is not None:
                raise RuntimeError(f"nats-server exited: {(work / 'nats.log').read_text()[-500:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("nats-server did not start")
            time.sleep(0.01)
        yield server
    finally:
        server.stop()
