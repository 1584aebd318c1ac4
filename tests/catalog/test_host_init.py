"""`sixpn host credentials` and `sixpn host init`: the files a real host gets and the units it prints."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from catalog import natsconf
from catalog.fleetconfig import load_host_config, read_credentials
from sixpn.cli import main
from tests.natscluster import nats_server_binary

SERVERS = ["--nats-server", "worker-gru,gru,10.0.1.2", "--nats-server", "worker-gig,gig,10.0.2.2",
           "--nats-server", "worker-sjc,sjc,10.0.3.2"]


@pytest.fixture
def operator(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """An operator's directory with admin, route and three hosts' credentials minted."""
    users = tmp_path / "users.toml"
    for argv in (["--role", "admin"], ["--role", "route"], ["worker-gru"], ["edge-gig"], ["worker-sjc"]):
        name = argv[1] if argv[0] == "--role" else argv[0]
        out = str(tmp_path / f"{name}.creds")
        assert main(["host", "credentials", *argv, "--users", str(users), "--out", out]) == 0
    capsys.readouterr()
    return tmp_path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _init(op: Path, name: str, role: str, region: str, underlay: str, *extra: str) -> Path:
    etc = op / name / "etc"
    argv = ["host", "init", name, "--role", role, "--region", region, "--underlay", underlay, *SERVERS,
            "--config-dir", str(etc), "--state-dir", str(op / name / "var"), "--users", str(op / "users.toml"),
            "--route-credentials", str(op / "route.creds"), *extra]
    assert main(argv) == 0
    return etc


def test_credentials_are_private_and_only_hashes_are_shared(operator: Path) -> None:
    creds = read_credentials(operator / "worker-gru.creds")
    assert creds.user == "host-worker-gru"
    assert _mode(operator / "worker-gru.creds") == 0o600 and _mode(operator / "users.toml") == 0o600
    table = (operator / "users.toml").read_text()
    assert creds.password not in table
    users = natsconf.load_users(operator / "users.toml")
    assert natsconf.bcrypt_check(creds.password, users["host-worker-gru"].password_hash)
    assert set(users) == {"admin", "route", "host-worker-gru", "host-edge-gig", "host-worker-sjc"}


def test_credentials_are_not_replaced_without_force(operator: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (operator / "worker-gru.creds").read_text()
    argv = ["host", "credentials", "worker-gru", "--users", str(operator / "users.toml"),
            "--out", str(operator / "worker-gru.creds")]
    assert main(argv) == 1
    assert "already has credentials" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0
    assert (operator / "worker-gru.creds").read_text() != before


def test_a_nats_host_gets_its_server_config_and_units(operator: Path, capsys: pytest.CaptureFixture[str]) -> None:
    etc = _init(operator, "worker-gru", "worker", "gru", "10.0.1.2")
    out = capsys.readouterr().out
    config = load_host_config(etc / "host.toml")
    assert (config.name, config.role, config.region, config.underlay) == ("worker-gru", "worker", "gru", "10.0.1.2")
    assert config.catalog.replicated and config.catalog.nats[0] == "nats://10.0.1.2:4222"
    assert config.catalog.credentials == etc / "nats.creds"
    conf = etc / "nats-server.conf"
    assert _mode(conf) == 0o600 and _mode(etc) == 0o700
    text = conf.read_text()
    assert 'server_name: "worker-gru"' in text and str(operator / "worker-gru" / "var" / "nats") in text
    assert read_credentials(operator / "worker-gru.creds").password not in text
    assert read_credentials(operator / "worker-gru.creds").password not in out
    check = subprocess.run([str(nats_server_binary()), "-t", "-c", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    units = [line.removeprefix("# ") for line in out.splitlines() if line.startswith("# sixpn-")]
    assert units == ["sixpn-nats.service", "sixpn-replicate.service", "sixpn-agent.service", "sixpn-dns.service",
                     "sixpn-mesh.service"]
    assert f"--host-config {etc / 'host.toml'} catalog replicate" in out
    assert "dns serve --host worker-gru" in out


def test_units_by_role(operator: Path, capsys: pytest.CaptureFixture[str]) -> None:
    etc = _init(operator, "edge-gig", "edge", "gig", "10.0.2.3", "--write-units", str(operator / "units"))
    out = capsys.readouterr().out
    assert not (etc / "nats-server.conf").exists()  # not one of the cluster's servers
    assert load_host_config(etc / "host.toml").catalog.nats[0] == "nats://10.0.2.2:4222"  # own region first
    assert sorted(p.name for p in (operator / "units").iterdir()) == [
        "sixpn-mesh.service", "sixpn-proxy.service", "sixpn-replicate.service"]
    assert "proxy serve --host edge-gig --listen 0.0.0.0:80 --listen [::]:80" in out
    assert "host agent" not in out and "dns serve" not in out

    assert main(["host", "init", "ops", "--role", "operator", "--region", "gru", *SERVERS,
                 "--config-dir", str(operator / "ops"), "--credentials", str(operator / "admin.creds")]) == 0
    assert ".service" not in capsys.readouterr().out  # the operator's seat runs nothing


def test_init_refuses_what_cannot_work(operator: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["host", "init", "worker-gru", "--role", "worker", "--region", "gru", "--underlay", "10.0.1.2",
            "--config-dir", str(operator / "x")]
    assert main(base) == 1
    assert "--nats-server" in capsys.readouterr().err
    assert main([*base, *SERVERS]) == 1  # a NATS server's host without the users table
    assert "--users" in capsys.readouterr().err
    assert main([*base, "--nats-server", "worker-gru,gru"]) == 1
    assert "NAME,REGION,ADDRESS" in capsys.readouterr().err
    assert main([*base[:2], "Worker_1", *base[3:], *SERVERS]) == 1
    assert main([*base, "--embedded"]) == 0
    assert load_host_config(operator / "x" / "host.toml").catalog.mode == "embedded"
    assert "catalog replicate" not in capsys.readouterr().out


def test_init_makes_the_mesh_key_and_the_operator_registers_it(operator: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    etc = _init(operator, "edge-gig", "edge", "gig", "10.0.2.3")
    out = capsys.readouterr().out
    assert _mode(etc / "wg.key") == 0o600
    line = next(x for x in out.splitlines() if "sixpn host register" in x)
    register = line.split("sixpn ", 1)[1].split()
    state = ["--state", str(operator / "catalog")]
    assert main([*state, *register]) == 0
    assert main([*state, "host", "list", "--json"]) == 0
    listed = capsys.readouterr().out
    key = register[register.index("--public-key") + 1]
    assert '"name": "edge-gig"' in listed and key in listed
    _init(operator, "edge-gig", "edge", "gig", "10.0.2.3")  # a second init keeps the key
    assert key in capsys.readouterr().out
