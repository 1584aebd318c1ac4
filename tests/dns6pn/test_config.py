"""Settings: address parsing, the TOML file (unknown keys refused), the CLI's one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dns6pn import DnsError, ServerConfig, parse_address
from dns6pn.config import from_toml, override


@pytest.mark.parametrize(("text", "want"), [
    ("[::1]:5353", ("::1", 5353)),
    ("[fdaa::3]", ("fdaa::3", 53)),
    ("127.0.0.1:0", ("127.0.0.1", 0)),
    ("fdaa::3", ("fdaa::3", 53)),
    ("192.0.2.1", ("192.0.2.1", 53)),
])
def test_parse_address(text: str, want: tuple[str, int]) -> None:
    assert parse_address(text) == want


@pytest.mark.parametrize("text", ["localhost:53", "[::1]:x", "[::1", "1.2.3.4:70000", "[::1]5353", ""])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(DnsError):
        parse_address(text)


def test_toml_config_and_flag_override(tmp_path: Path) -> None:
    path = tmp_path / "dns.toml"
    path.write_text('listen = ["[::1]:5353"]\nupstreams = ["192.0.2.53:53"]\nttl = 9\n')
    config = from_toml(path)
    assert config == ServerConfig(listen=(("::1", 5353),), upstreams=(("192.0.2.53", 53),), ttl=9)
    assert override(config, ttl=3, host=None).ttl == 3


@pytest.mark.parametrize(("body", "error"), [
    ("ttl = 5\nlisten_on = []\n", "unknown keys listen_on"),
    ('ttl = "5"\n', "ttl must be of type int"),
    ("listen = [1]\n", "list of address strings"),
    ("ttl = -1\n", "ttl must be"),
    ("max_udp = 100\n", "max_udp"),
    ("ttl = \n", "not valid TOML"),
])
def test_bad_toml(tmp_path: Path, body: str, error: str) -> None:
    path = tmp_path / "dns.toml"
    path.write_text(body)
    with pytest.raises(DnsError, match=error):
        from_toml(path)


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sixpn.cli", *argv], capture_output=True, text=True, timeout=60)


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    assert cli("dns", "serve", "--help").returncode == 0
    for argv, message in [
        ((), "give --listen"),
        (("--listen", "nowhere:53"), "not an IP address"),
        (("--host", "nope"), "no host named"),
        (("--config", str(tmp_path / "missing.toml"), "--listen", "127.0.0.1:0"), "missing.toml"),
    ]:
        result = cli("--state", str(tmp_path / "state"), "dns", "serve", *argv)
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith("sixpn: ") and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_cli_query_answers_from_the_catalog(tmp_path: Path) -> None:
    from tests.dns6pn.world import build

    world = build(tmp_path / "state")
    world.catalog.close()
    state = str(tmp_path / "state")
    done = cli("--state", state, "dns", "query", "web.internal", "--from", world.web_gru.id)
    assert done.returncode == 0 and "NOERROR" in done.stdout and world.web_ams.address in done.stdout
    done = cli("--state", state, "dns", "query", "web.internal", "--from", world.globex.id)
    assert done.returncode == 0 and "NXDOMAIN" in done.stdout
    done = cli("--state", state, "dns", "query", "_peer.internal", "TXT", "--from", "alice")
    assert done.returncode == 0 and '"alice"' in done.stdout
    assert "forwards" in cli("--state", state, "dns", "query", "example.com", "--from", "alice").stdout
    assert cli("--state", state, "dns", "query", "x.internal", "BOGUS", "--from", "alice").returncode == 1
