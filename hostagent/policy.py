"""What to do when a machine's main process exits: the restart policy as a pure function (no clock, no I/O).

Fly's semantics (https://fly.io/docs/machines/guides-examples/machine-restart-policy/): `no` never restarts;
`always` restarts whatever the exit code and never lets the machine stop by itself; `on-failure` restarts after a
non-zero exit (a death by signal counts as one) up to `retries` times, then leaves it stopped. A clean exit under
`on-failure` is the app's way to scale itself down, so it is not retried.
"""

from __future__ import annotations

from dataclasses import dataclass

from catalog.appconfig import RestartPolicy

#: A process that ran at least this long before exiting is restarted at once: it was not crash-looping.
STABLE_AFTER = 10.0
#: A crash loop backs off 0.1, 0.2, 0.4 ... seconds, capped: a broken app must not eat the host's CPU.
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0


@dataclass(frozen=True)
class Restart:
    """Start the process again at `at` (the caller's clock); `restarts` is the new count to report."""

    at: float
    restarts: int

    def __repr__(self) -> str:
        return f"<Restart #{self.restarts} at {self.at:.2f}>"


@dataclass(frozen=True)
class StayDown:
    """Leave the machine stopped; `why` goes to the agent's log."""

    why: str

    def __repr__(self) -> str:
        return f"<StayDown: {self.why}>"


Decision = Restart | StayDown


def failed(exit_code: int | None) -> bool:
    """Non-zero status, or killed by a signal (negative), or unknown (an adopted process whose status was lost):
    an unknown end is treated as a failure, since a clean exit is the only one that must not be retried."""
    return exit_code != 0


def backoff(restarts: int, ran_for: float) -> float:
    if ran_for >= STABLE_AFTER:
        return 0.0
    return min(MAX_BACKOFF, FIRST_BACKOFF * float(2 ** min(restarts, 16)))


def decide(exit_code: int | None, policy: RestartPolicy, restarts: int, started_at: float, now: float) -> Decision:
    """`restarts`: how many times the policy already restarted this machine since it was last started on
    purpose; `started_at`: when the process that just exited was started (same clock as `now`)."""
    if policy.policy == "no":
        return StayDown("restart policy is no")
    if policy.policy == "on-failure":
        if not failed(exit_code):
            return StayDown("exited cleanly (restart policy on-failure)")
        if restarts >= policy.retries:
            return StayDown(f"exited with {exit_code} after {restarts} restarts (on-failure, retries={policy.retries})")
    return Restart(at=now + backoff(restarts, now - started_at), restarts=restarts + 1)
