from __future__ import annotations

import json
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from catalog import Catalog
from sixpn.cli import main
from wgmesh import keys

from .world import World, make_world


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = make_world(tmp_path / "state")
    yield w
    w.cat.close()


class FakeAgent:
    """Stands in for a gateway's agent: reports each new catalog position as applied (in the catalog, as the
    real one does), within 10 ms; its own report is not news."""

    def __init__(self, state_dir: Path, host: str) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(state_dir, host), daemon=True)
        self.thread.start()

    def _run(self, state_dir: Path, host: str) -> None:
        seen = 0
        with Catalog(state_dir) as cat:
            while not self.stop.wait(0.01):
                if cat.position() > seen:
                    cat.observe_host(host, cat.position())
                    seen = cat.position()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


@pytest.fixture
def agents(world: World) -> Iterator[None]:
    fakes = [FakeAgent(world.cat.state_dir, h) for h in ("gw-gru", "gw-sjc")]
    yield
    for fake in fakes:
        fake.close()


def sixpn(world: World, *argv: str) -> int:
    return main(["--state", str(world.cat.state_dir), *argv])


def test_create_prints_config_with_matching_key(world: World, agents: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert sixpn(world, "wg", "create", "acme", "gru", "alice") == 0
    out = capsys.readouterr().out
    fields = dict(line.split(" = ", 1) for line in out.splitlines() if " = " in line)
    peer = world.cat.peer("alice")
    assert keys.public_of(fields["PrivateKey"]) == peer.public_key
    assert fields["Address"] == f"{peer.address}/120"
    assert fields["AllowedIPs"] == str(world.cat.network("acme").prefix)
    assert fields["DNS"] == str(world.cat.network("acme").dns_address)
    assert fields["PublicKey"] == world.keys["gw-gru"].public
    assert fields["Endpoint"] == "192.0.2.4:51820"
    assert peer.host == "gw-gru"


def test_create_to_file_is_0600_and_never_overwrites(world: World, agents: None, tmp_path: Path) -> None:
    path = tmp_path / "acme-alice.conf"
    assert sixpn(world, "wg", "create", "acme", "sjc", "alice", str(path)) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "Endpoint = [2001:db8::5]:51820" in path.read_text()
    before = path.read_text()
    assert sixpn(world, "wg", "create", "acme", "sjc", "bob", str(path)) == 1
    assert path.read_text() == before
    assert "bob" not in world.cat.snapshot().peers


@pytest.mark.parametrize("argv, message", [
    (["nosuch", "gru", "x"], "no org"),
    (["acme", "zzz", "x"], "unknown region"),
    (["acme", "iad", "x"], "no WireGuard gateway"),
    (["acme", "gru", "bad_name"], "peer name"),
    (["acme", "gru", "x", "waytoolongfilename.conf"], "15"),
    (["acme", "gru", "x", "--public-key", "nope"], "malformed public key"),
    (["acme", "gru", "x", "--network", "globex"], "another org"),
])
def test_bad_input_is_one_line_and_leaves_nothing(
    world: World, agents: None, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert sixpn(world, "wg", "create", *argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not world.cat.snapshot().peers


def test_duplicate_name_is_refused(world: World, agents: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert sixpn(world, "wg", "create", "acme", "gru", "alice") == 0
    assert sixpn(world, "wg", "create", "globex", "gru", "alice") == 1
    assert "already exists" in capsys.readouterr().err
    assert world.cat.peer("alice").org == "acme"


def test_public_key_mode_keeps_private_key(world: World, agents: None, capsys: pytest.CaptureFixture[str]) -> None:
    mine = keys.generate()
    assert sixpn(world, "wg", "create", "acme", "gru", "alice", "--public-key", mine.public) == 0
    out = capsys.readouterr().out
    assert mine.private not in out and "# PrivateKey = " in out
    assert world.cat.peer("alice").public_key == mine.public


def test_nearest_gateway_from_region(world: World, agents: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIXPN_REGION", "iad")  # iad-gru 115 ms, iad-sjc 60 ms
    assert sixpn(world, "wg", "create", "acme") == 0
    (peer,) = world.cat.snapshot().peers.values()
    assert peer.host == "gw-sjc" and peer.name.startswith("acme-")


def test_list_remove_reset(world: World, agents: None, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert sixpn(world, "wg", "create", "acme", "gru", "alice") == 0
    assert sixpn(world, "wg", "create", "globex", "gru", "carol") == 0
    capsys.readouterr()
    assert sixpn(world, "wg", "list", "acme", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["region"], r["gateway"]) for r in rows] == [("alice", "gru", "gw-gru")]
    old = world.cat.peer("alice").public_key
    assert sixpn(world, "wg", "reset", "acme", "alice", str(tmp_path / "alice.conf")) == 0
    new = world.cat.peer("alice").public_key
    assert new != old and "PrivateKey = " in (tmp_path / "alice.conf").read_text()
    assert sixpn(world, "wg", "remove", "globex", "alice") == 1  # not globex's peer
    assert sixpn(world, "wg", "remove", "acme", "alice") == 0
    assert "alice" not in world.cat.snapshot().peers
    assert world.cat.host("gw-gru").mesh_applied > 0


def test_remove_without_agent_fails_loudly(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.cat.create_peer("acme", "alice", "gw-gru", keys.generate().public)
    assert sixpn(world, "wg", "remove", "acme", "alice", "--wait", "0.1") == 1
    assert "has not applied" in capsys.readouterr().err


def test_qr_code_is_printed(world: World, agents: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert sixpn(world, "wg", "create", "acme", "gru", "alice", "--qr") == 0
    out = capsys.readouterr().out
    assert "█" in out or "▀" in out


def test_mesh_status_shows_applied_versions(world: World, agents: None, capsys: pytest.CaptureFixture[str]) -> None:
    deadline = 200
    while not world.cat.host("gw-gru").mesh_applied and deadline:
        threading.Event().wait(0.01)
        deadline -= 1
    assert sixpn(world, "mesh", "status", "--json") == 0
    rows = {r["host"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["gw-gru"]["applied"] is not None and rows["gw-gru"]["keyed"]
    assert rows["worker-gru"]["applied"] is None


def test_public_key_of_a_host_or_peer_is_refused(world: World, agents: None,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    gw_key = world.keys["gw-gru"].public
    assert sixpn(world, "wg", "create", "acme", "gru", "mallory", "--public-key", gw_key) == 1
    assert "already in use" in capsys.readouterr().err
    assert sixpn(world, "wg", "create", "acme", "gru", "alice") == 0
    alice = world.cat.peer("alice").public_key
    assert sixpn(world, "wg", "create", "globex", "gru", "eve", "--public-key", alice) == 1
    assert sixpn(world, "wg", "reset", "acme", "alice", "--public-key", gw_key) == 1
    assert world.cat.peer("alice").public_key == alice
    assert "mallory" not in world.cat.snapshot().peers and "eve" not in world.cat.snapshot().peers
