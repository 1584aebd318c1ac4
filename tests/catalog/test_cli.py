"""The catalog verbs of the `sixpn` CLI, run as a user would: a real process, its exit code and output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def sixpn(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sixpn.cli", "--state", str(state), *args],
        capture_output=True, text=True, timeout=60,
    )


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def test_orgs_and_apps_round_trip_as_json(state: Path, tmp_path: Path) -> None:
    assert sixpn(state, "orgs", "create", "acme").returncode == 0
    fly = tmp_path / "fly.toml"
    fly.write_text('app = "web"\n[http_service]\ninternal_port = 8080\n')
    made = sixpn(state, "apps", "create", "web", "--org", "acme", "--config", str(fly))
    assert made.returncode == 0, made.stderr
    assert "fdaa:0:" in made.stdout
    apps = json.loads(sixpn(state, "apps", "list", "--json").stdout)
    assert apps == [{"name": "web", "org": "acme", "network": "acme", "internal_port": 8080, "machines": 0}]
    orgs = json.loads(sixpn(state, "orgs", "list", "--json").stdout)
    assert orgs[0]["name"] == "acme" and orgs[0]["networks"]["acme"].endswith("::/48")
    assert json.loads(sixpn(state, "machines", "list", "--json").stdout) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("apps", "create", "web", "--org", "nobody"), "no org named 'nobody'"),
        (("machines", "list", "--app", "ghost"), "no app named 'ghost'"),
        (("orgs", "create", "Not_Valid"), "org name 'Not_Valid'"),
    ],
)
def test_user_mistakes_are_one_line_without_traceback(state: Path, args: tuple[str, ...], message: str) -> None:
    result = sixpn(state, *args)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_config_names_the_key(state: Path, tmp_path: Path) -> None:
    sixpn(state, "orgs", "create", "acme")
    fly = tmp_path / "fly.toml"
    fly.write_text("[http_service]\ninternal_port = 8080\n[http_service.concurrency]\nsoft_limit = 9\nhard_limit = 3\n")
    result = sixpn(state, "apps", "create", "web", "--org", "acme", "--config", str(fly))
    assert result.returncode == 1
    assert "http_service.concurrency.soft_limit" in result.stderr
    assert json.loads(sixpn(state, "apps", "list", "--json").stdout) == []


def test_regions_lists_the_matrix(state: Path) -> None:
    rows = json.loads(sixpn(state, "regions", "--json").stdout)
    gru = next(r for r in rows if r["code"] == "gru")
    assert gru["rtt_sjc"] == 175.0 and gru["rtt_gru"] == 1.0
