"""The fly.toml-shaped app config: durations, defaults, and errors naming the key's path."""

from __future__ import annotations

import pytest

from catalog import appconfig
from catalog.errors import ConfigError

SPEC_EXAMPLE = """
app = "web"
primary_region = "gru"
[http_service]
  internal_port = 8080
  force_https = false
  [http_service.concurrency]
    type = "requests"
    soft_limit = 20
    hard_limit = 25
  [[http_service.checks]]
    interval = "10s"
    timeout = "2s"
    grace_period = "5s"
    method = "GET"
    path = "/healthz"
"""


def test_spec_example_loads() -> None:
    config = appconfig.loads(SPEC_EXAMPLE)
    service = config.http_service
    assert service is not None
    assert config.app == "web" and config.primary_region == "gru"
    assert service.internal_port == 8080
    assert service.concurrency == appconfig.Concurrency("requests", 20, 25)
    check = service.http_checks[0]
    assert (check.interval, check.timeout, check.grace_period, check.path) == (10.0, 2.0, 5.0, "/healthz")


@pytest.mark.parametrize(("text", "seconds"), [("10s", 10.0), ("500ms", 0.5), ("1m", 60.0), ("1.5s", 1.5), (3, 3.0)])
def test_durations(text: object, seconds: float) -> None:
    assert appconfig.parse_duration(text, "x") == seconds


@pytest.mark.parametrize("bad", ["10", "ten seconds", "-1s", True, "5d"])
def test_bad_durations_name_the_key(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"^a\.b: "):
        appconfig.parse_duration(bad, "a.b")


def test_defaults_without_concurrency() -> None:
    service = appconfig.loads("[http_service]\ninternal_port = 80\n").http_service
    assert service is not None
    assert service.concurrency == appconfig.Concurrency("connections", 20, None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[http_service]\ninternal_port = 8080\nbogus = 1\n", r"http_service\.bogus: unknown key"),
        ("[http_service]\ninternal_port = 0\n", r"http_service\.internal_port: 0 is outside 1\.\.65535"),
        ("[http_service]\n", r"http_service\.internal_port: required"),
        (
            "[http_service]\ninternal_port = 1\n[http_service.concurrency]\nsoft_limit = 30\nhard_limit = 25\n",
            r"http_service\.concurrency\.soft_limit: 30 is above hard_limit 25",
        ),
        (
            "[http_service]\ninternal_port = 1\n[http_service.concurrency]\ntype = \"sessions\"\n",
            r"http_service\.concurrency\.type",
        ),
        (
            "[http_service]\ninternal_port = 1\n[[http_service.checks]]\ninterval = \"soon\"\n",
            r"http_service\.checks\[0\]\.interval",
        ),
        ("[[services]]\ninternal_port = 1\n[[services.ports]]\nport = 70000\n", r"services\[0\]\.ports\[0\]\.port"),
        ("nonsense = 1\n", r"^nonsense: unknown key"),
        ("app = 3\n", r"^app: expected a string"),
        ("this is not toml", r"not valid TOML"),
    ],
)
def test_errors_name_the_key_path(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        appconfig.loads(text)


def test_services_with_tcp_checks_and_ports() -> None:
    config = appconfig.loads(
        """
[[services]]
internal_port = 5432
protocol = "tcp"
[[services.ports]]
port = 5432
[[services.tcp_checks]]
interval = "15s"
timeout = "1s"
"""
    )
    (service,) = config.services
    assert service.ports == (5432,)
    assert service.tcp_checks[0].timeout == 1.0
    assert config.http_service is None


def test_config_is_frozen() -> None:
    config = appconfig.loads(SPEC_EXAMPLE)
    with pytest.raises(AttributeError):
        config.app = "other"  # type: ignore[misc]
