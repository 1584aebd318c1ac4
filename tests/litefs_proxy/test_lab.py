"""In the lab: the notes app behind the proxy in gru (primary) and sjc (replica), driven by curl from sjc's
client through the anycast edge. Checked with curl's own output (status, headers, body), never with our code.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from catalog import Machine
from netns_lab.lab import Lab
from netns_lab.machines import Machines
from netns_lab.plan import ANYCAST4

pytestmark = pytest.mark.lab

CONFIG = """\
fuse:
  dir: {root}/mnt-${{FLY_MACHINE_ID}}
proxy:
  addr: ":8080"
  target: "localhost:8081"
  db: "notes.db"
  mode: {mode}
  forward-target: "{{primary}}.vm.${{FLY_APP_NAME}}.internal:8080"
  primary-redirect-timeout: 10s
replicator:
  role: auto
  addr: ":20202"
  primary-url: "{primary_url}"
"""


@pytest.fixture
def workdir(lab: Lab) -> Iterator[Path]:
    # Requested before lab_app by the tests, so it is removed after the machines writing into it are gone. In the
    # lab's share dir: the one host directory a machine's sandboxed app sees (and may write to, as its own uid).
    with tempfile.TemporaryDirectory(prefix="litefs-lab-", dir=lab.share_dir, ignore_cleanup_errors=True) as d:
        os.chmod(d, 0o1777)
        yield Path(d)


def app_config(root: Path) -> dict[str, Any]:
    serve = (f"{sys.executable} -m sixpn.cli litefs-proxy serve --config {root}/litefs-$FLY_REGION.yml "
             f"--exec '{sys.executable} -m sixpn.cli litefs-proxy demo-app --db {root}/mnt-$FLY_MACHINE_ID/notes.db "
             f"--port 8081'")
    return {"primary_region": "gru", "env": {"PRIMARY_REGION": "gru"}, "processes": {"app": serve},
            "http_service": {"internal_port": 8080}}


def deploy(lab: Lab, lab_app: Callable[..., list[Machine]], name: str, root: Path,
           mode: str) -> tuple[Machine, Machine]:
    """The primary in gru first (its address goes into the replica's config), then the replica in sjc."""
    (root / "litefs-gru.yml").write_text(CONFIG.format(root=root, mode=mode, primary_url="http://unused"))
    (gru,) = lab_app(name, count=1, regions=["gru"], config=app_config(root))
    url = f"http://[{gru.address}]:20202"
    (root / "litefs-sjc.yml").write_text(CONFIG.format(root=root, mode=mode, primary_url=url))
    added = Machines(lab).scale(name, 2, ["gru", "sjc"]).added
    (sjc,) = [m for m in added if m.region == "sjc"]
    return gru, sjc


def curl(lab: Lab, app: str, root: Path, *args: str) -> tuple[int, dict[str, str], bytes]:
    """curl from sjc's client through the anycast edge: (status, the final response's headers, body)."""
    head_file, body_file = root / "curl.head", root / "curl.body"
    out = lab.exec("client-sjc", ["curl", "-sS", "-m", "25", "-D", str(head_file), "-o", str(body_file),
                                  "-H", f"Host: {app}.sixpn.test", *args], timeout=40)
    assert out.returncode == 0, out.stderr
    blocks = [b for b in head_file.read_bytes().decode("latin-1").split("\r\n\r\n") if b.strip()]
    lines = blocks[-1].strip().split("\r\n")  # after any `100 Continue`
    headers: dict[str, str] = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body_file.read_bytes()


def wait_ready(lab: Lab, app: str, root: Path, sjc: Machine) -> None:
    """The replica knows its primary and holds the database (created by a first write through the edge)."""
    deadline = time.monotonic() + 40
    while not (root / f"mnt-{sjc.id}" / ".primary").exists():
        assert time.monotonic() < deadline, "the replica never heard from the primary"
        time.sleep(0.2)
    status, _, _ = curl(lab, app, root, "-X", "POST", "--data-binary", "migration", f"http://{ANYCAST4}/notes")
    assert status == 201
    while not (root / f"mnt-{sjc.id}" / "notes.db-pos").exists():
        assert time.monotonic() < deadline, "the replica never received the database"
        time.sleep(0.2)


def read_your_write(lab: Lab, app: str, root: Path, gru: Machine, body_file: Path, expect: bytes) -> None:
    jar = root / f"{app}.cookies"
    status, headers, body = curl(lab, app, root, "-X", "POST", "-c", str(jar), "--data-binary", f"@{body_file}",
                                 f"http://{ANYCAST4}/notes")
    assert status == 201, body
    doc = json.loads(body)
    assert (doc["region"], doc["machine_id"], doc["size"]) == ("gru", gru.id, len(expect))  # the primary wrote it
    cookie = headers.get("set-cookie", "")
    assert re.fullmatch(r"__txid=[0-9a-f]{16}; Path=/; Expires=.* GMT; HttpOnly", cookie), headers
    status, headers, body = curl(lab, app, root, "-b", str(jar), f"http://{ANYCAST4}/notes/{doc['id']}")
    assert (status, headers["x-region"]) == (200, "sjc")  # read on the replica, after it caught up
    assert body == expect


def test_replay_mode_post_from_sjc_reaches_gru_and_the_next_get_sees_it(
        lab: Lab, workdir: Path, lab_app: Callable[..., list[Machine]]) -> None:
    gru, sjc = deploy(lab, lab_app, "lfs-notes", workdir, "replay")
    wait_ready(lab, "lfs-notes", workdir, sjc)
    note = workdir / "note.txt"
    note.write_bytes(b"hello from sjc\n")
    read_your_write(lab, "lfs-notes", workdir, gru, note, b"hello from sjc\n")
    status, _, body = curl(lab, "lfs-notes", workdir, f"http://{ANYCAST4}/litefs/health")
    assert (status, body) == (200, b"OK\n")


def test_forward_mode_moves_a_5mib_write_without_the_edge_replaying(
        lab: Lab, workdir: Path, lab_app: Callable[..., list[Machine]]) -> None:
    gru, sjc = deploy(lab, lab_app, "lfs-fwd", workdir, "forward")
    wait_ready(lab, "lfs-fwd", workdir, sjc)
    big = workdir / "big.bin"
    big.write_bytes(bytes(range(256)) * (5 * 4096))  # 5 MiB: above the edge's 1 MiB replay limit
    read_your_write(lab, "lfs-fwd", workdir, gru, big, big.read_bytes())


REGION_CONFIG = """\
proxy:
  addr: ":8080"
  target: "localhost:8081"
  mode: primary-region
  rw-window: 30s
"""


def test_primary_region_mode_replays_writes_and_then_the_writers_reads(
        lab: Lab, workdir: Path, lab_app: Callable[..., list[Machine]]) -> None:
    """No LiteFS: the lab's sample app behind the proxy in primary-region mode (PRIMARY_REGION=gru)."""
    (workdir / "region.yml").write_text(REGION_CONFIG)
    serve = (f"{sys.executable} -m sixpn.cli litefs-proxy serve --config {workdir}/region.yml "
             f"--exec '{sys.executable} -m netns_lab.sampleapp --port 8081'")
    config = {"primary_region": "gru", "env": {"PRIMARY_REGION": "gru"}, "processes": {"app": serve},
              "http_service": {"internal_port": 8080}}
    lab_app("lfs-region", count=2, regions=["gru", "sjc"], config=config)
    jar = workdir / "regional.cookies"
    status, _, body = curl(lab, "lfs-region", workdir, f"http://{ANYCAST4}/")
    assert status == 200 and json.loads(body)["region"] == "sjc"  # reads stay local
    status, headers, body = curl(lab, "lfs-region", workdir, "-c", str(jar), "--data-binary", "w",
                                 f"http://{ANYCAST4}/echo")
    assert (status, body) == (200, b"w")  # replayed to gru by the edge, answered there
    assert headers.get("set-cookie", "").startswith("__sixpn_primary="), headers
    status, _, body = curl(lab, "lfs-region", workdir, "-b", str(jar), f"http://{ANYCAST4}/")
    assert status == 200 and json.loads(body)["region"] == "gru"  # the writer's reads follow it to gru
