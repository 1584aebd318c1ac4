"""Desired machines vs. what runs on this host -> the actions that close the gap (pure: no clock, no I/O).

The agent keeps one phase per machine it knows; the catalog says which machines this host must have and whether
each should run. A machine that exited and was left down by its restart policy stays down while its desired
state is still "started": only a new start request (desired going stopped -> started) starts it again, as
`fly machine start` does for a stopped Machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from catalog.models import Desired

#: absent: nothing built; down: namespace built, no process (stopped on purpose, or left down by the policy);
#: starting: spawned, not yet listening; running; backoff: exited, a restart is scheduled; stopping: SIGTERM sent;
#: tearing: being removed (the row is gone).
Phase = Literal["absent", "down", "starting", "running", "backoff", "stopping", "tearing"]
PHASES: tuple[Phase, ...] = ("absent", "down", "starting", "running", "backoff", "stopping", "tearing")


@dataclass(frozen=True)
class Want:
    """What the catalog asks of one machine of this host."""

    desired: Desired
    start_requested: bool = False  # desired went stopped -> started since the machine last started


@dataclass(frozen=True)
class Prepare:
    """Build the machine's namespace without starting it (created with desired = stopped)."""

    machine_id: str


@dataclass(frozen=True)
class Start:
    """Build the namespace if needed and start the app's process; `fresh`: a start on purpose (the restart count
    starts again), not the restart policy's."""

    machine_id: str
    fresh: bool = True


@dataclass(frozen=True)
class Stop:
    """SIGTERM, SIGKILL after the grace; a scheduled restart is cancelled."""

    machine_id: str


@dataclass(frozen=True)
class Teardown:
    """Stop whatever runs and remove the namespace: the machine's row is gone."""

    machine_id: str


Action = Prepare | Start | Stop | Teardown


def plan(wanted: Mapping[str, Want], phases: Mapping[str, Phase]) -> list[Action]:
    """The actions, in machine id order so that a run is reproducible; an agent at rest gets none."""
    actions: list[Action] = []
    for mid in sorted(set(wanted) | set(phases)):
        want = wanted.get(mid)
        phase = phases.get(mid, "absent")
        if want is None:
            if phase not in ("absent", "tearing"):
                actions.append(Teardown(mid))
        elif want.desired == "started":
            if phase == "absent" or (phase == "down" and want.start_requested):
                actions.append(Start(mid))
        elif phase == "absent":
            actions.append(Prepare(mid))
        elif phase in ("starting", "running", "backoff"):
            actions.append(Stop(mid))
    return actions
