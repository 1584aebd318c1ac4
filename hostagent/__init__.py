"""The host agent (`sixpn host agent`, the flyd of sixpn): on one worker, it makes the machines placed there what the
catalog asks (built, started, stopped, torn down), confines each app in a sandbox, notices every exit at once, applies
the app's restart policy, runs the app's checks and reports all of it as the machines' observed state.

Pure decisions in `policy` (exits) and `plan` (desired vs. running); the I/O in `runtime`, `sandbox`, `checks`,
`statefile` and the asyncio `agent`. It stands on `catalog` only."""

from hostagent.errors import HostAgentError

__all__ = ["HostAgentError"]
