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


def test_restart_policies_per_process_group_and_flys_default() -> None:
    config = appconfig.loads(
        '[processes]\napp = "serve"\nworker = "work"\n'
        '[[restart]]\npolicy = "always"\nprocesses = ["worker"]\n'
        '[[restart]]\npolicy = "on-fail"\nretries = 3\n'
    )
    assert config.restart_for("worker") == appconfig.RestartPolicy("always", 10, ("worker",))
    assert config.restart_for("app") == appconfig.RestartPolicy("on-failure", 3, ())
    assert appconfig.loads('[[restart]]\npolicy = "never"\n').restart_for("app").policy == "no"
    assert appconfig.DEFAULT.restart_for("app") == appconfig.RestartPolicy("on-failure", 10, ())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[restart]]\npolicy = "sometimes"\n', r'^restart\[0\]\.policy: must be "always", "on-failure" or "no"'),
        ("[[restart]]\nretries = -1\n", r"^restart\[0\]\.retries: -1 is outside"),
        ('[[restart]]\nretries = "3"\n', r"^restart\[0\]\.retries: expected an integer"),
        ("[[restart]]\nbogus = 1\n", r"^restart\[0\]\.bogus: unknown key"),
        ('[[restart]]\npolicy = "no"\n[[restart]]\npolicy = "always"\n',
         r"^restart\[1\]\.processes: a second restart policy for every process group"),
        ('[processes]\napp = "x"\n[[restart]]\nprocesses = ["web"]\n',
         r"^restart\[0\]\.processes: no process group 'web' in \[processes\]"),
        ("restart = 3\n", r"^restart: expected an array of tables"),
    ],
)
def test_restart_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        appconfig.loads(text)
