"""The restart policy as a pure function: every branch, and Fly's default when fly.toml has no [[restart]]."""

from __future__ import annotations

import pytest

from catalog import appconfig
from catalog.appconfig import RestartPolicy
from hostagent.policy import FIRST_BACKOFF, MAX_BACKOFF, STABLE_AFTER, Restart, StayDown, backoff, decide, failed

ALWAYS = RestartPolicy("always")
NO = RestartPolicy("no")
ON_FAILURE_2 = RestartPolicy("on-failure", retries=2)


def test_no_never_restarts_whatever_the_exit() -> None:
    for code in (0, 1, -9, None):
        assert isinstance(decide(code, NO, 0, 0.0, 100.0), StayDown)


def test_always_restarts_even_a_clean_exit_and_counts() -> None:
    for code in (0, 3, -9, None):
        decision = decide(code, ALWAYS, 4, 0.0, 100.0)
        assert decision == Restart(at=100.0, restarts=5)  # ran 100 s: stable, so at once


def test_on_failure_retries_a_failure_up_to_the_limit_then_stays_down() -> None:
    assert decide(1, ON_FAILURE_2, 0, 99.0, 100.0) == Restart(at=100.0 + FIRST_BACKOFF, restarts=1)
    assert decide(-9, ON_FAILURE_2, 1, 99.0, 100.0) == Restart(at=100.0 + 2 * FIRST_BACKOFF, restarts=2)
    down = decide(1, ON_FAILURE_2, 2, 99.0, 100.0)
    assert isinstance(down, StayDown) and "retries=2" in down.why


def test_on_failure_does_not_retry_a_clean_exit() -> None:
    down = decide(0, ON_FAILURE_2, 0, 0.0, 100.0)
    assert isinstance(down, StayDown) and "cleanly" in down.why


def test_an_unknown_exit_counts_as_a_failure() -> None:
    assert failed(None) and failed(-15) and failed(2) and not failed(0)
    assert isinstance(decide(None, ON_FAILURE_2, 0, 0.0, 100.0), Restart)


@pytest.mark.parametrize(("restarts", "ran_for", "delay"), [
    (0, 0.5, FIRST_BACKOFF), (1, 0.5, 2 * FIRST_BACKOFF), (3, 0.5, 8 * FIRST_BACKOFF), (40, 0.5, MAX_BACKOFF),
    (40, STABLE_AFTER, 0.0),
])
def test_a_crash_loop_backs_off_and_a_stable_run_does_not(restarts: int, ran_for: float, delay: float) -> None:
    assert backoff(restarts, ran_for) == pytest.approx(delay)


def test_flys_default_is_on_failure_with_ten_retries() -> None:
    policy = appconfig.DEFAULT.restart_for("app")
    assert (policy.policy, policy.retries) == ("on-failure", 10)
    assert isinstance(decide(1, policy, 9, 0.0, 1.0), Restart)
    assert isinstance(decide(1, policy, 10, 0.0, 1.0), StayDown)


def test_reprs_tell_the_decision() -> None:
    assert repr(Restart(at=1.5, restarts=2)) == "<Restart #2 at 1.50>"
    assert repr(StayDown("restart policy is no")) == "<StayDown: restart policy is no>"
