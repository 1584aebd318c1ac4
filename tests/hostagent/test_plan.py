"""desired vs. running -> actions, every branch of `plan` (pure)."""

from __future__ import annotations

import pytest

from hostagent.plan import PHASES, Phase, Prepare, Start, Stop, Teardown, Want, plan

STARTED, STOPPED = Want("started"), Want("stopped")
REQUESTED = Want("started", start_requested=True)


@pytest.mark.parametrize(("want", "phase", "expected"), [
    (STARTED, "absent", [Start("m")]),
    (STARTED, "down", []),  # left down by its restart policy: only a start request starts it
    (REQUESTED, "down", [Start("m")]),
    (REQUESTED, "absent", [Start("m")]),
    (STARTED, "starting", []), (STARTED, "running", []), (STARTED, "backoff", []), (STARTED, "stopping", []),
    (REQUESTED, "stopping", []),  # started again once the stop has ended (the request waits)
    (STOPPED, "absent", [Prepare("m")]),
    (STOPPED, "starting", [Stop("m")]), (STOPPED, "running", [Stop("m")]), (STOPPED, "backoff", [Stop("m")]),
    (STOPPED, "down", []), (STOPPED, "stopping", []), (STOPPED, "tearing", []),
    (None, "absent", []), (None, "tearing", []),
    (None, "running", [Teardown("m")]), (None, "down", [Teardown("m")]), (None, "backoff", [Teardown("m")]),
])
def test_each_want_and_phase(want: Want | None, phase: Phase, expected: list[object]) -> None:
    wanted = {} if want is None else {"m": want}
    assert plan(wanted, {"m": phase}) == expected


def test_a_host_at_rest_gets_no_action() -> None:
    assert plan({"a": STARTED, "b": STOPPED}, {"a": "running", "b": "down"}) == []
    assert plan({}, {}) == []


def test_actions_come_in_machine_id_order() -> None:
    actions = plan({"c": STARTED, "a": STARTED}, {"b": "running"})
    assert actions == [Start("a"), Teardown("b"), Start("c")]


def test_every_phase_is_handled_for_every_want() -> None:
    for phase in PHASES:
        for want in (STARTED, STOPPED, REQUESTED, None):
            wanted = {} if want is None else {"m": want}
            assert len(plan(wanted, {"m": phase})) <= 1
