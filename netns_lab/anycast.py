"""Anycast health: an edge whose proxy stopped serving withdraws its anycast route, as a BGP session
dropping with the proxy would, and announces it again once the proxy serves.

Run by the supervisor every tick. An edge is withdrawn while
- its proxy service is stopped on purpose (`sixpn lab stop EDGE proxy`): at once; or
- its proxy has served (listened on :80) since it last started, and has not been serving for HOLD_DOWN
  seconds (crashed and waiting for its restart, or hung).
A proxy that has never served since it started keeps the edge announced: a proxy still starting (or a lab
without proxies) does not blackhole anycast. Cuts are separate (`lab cut`); the route goes to the nearest
edge that is neither cut nor withdrawn.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from netns_lab import services, system
from netns_lab.lab import Lab

HOLD_DOWN = 0.5


@dataclass
class EdgeHealth:
    lab: Lab
    served: dict[str, int] = field(default_factory=dict)  # edge -> pid of the proxy seen serving
    failing_since: dict[str, float] = field(default_factory=dict)

    def edge_state(self, edge: str, now: float) -> bool:
        """True when the edge should be withdrawn."""
        name = f"{edge}.proxy"
        run = self.lab.run_dir
        if (run / "stopped" / f"{name}.json").exists():
            self.served.pop(edge, None)
            return True
        if not (run / "services" / f"{name}.json").exists():
            return False  # this lab runs no proxy
        pid = system.read_pid(run / "pids" / f"{name}.pid")
        serving = pid is not None and system.alive(pid) and services.listens(pid, 80)
        if serving:
            assert pid is not None
            self.served[edge] = pid
            self.failing_since.pop(edge, None)
            return False
        if edge not in self.served:
            return False
        since = self.failing_since.setdefault(edge, now)
        return now - since >= HOLD_DOWN

    def tick(self, now: float) -> bool:
        """Re-route anycast if the set of withdrawn edges changed; True if it did."""
        withdrawn = frozenset(e.name for e in self.lab.plan.with_role("edge") if self.edge_state(e.name, now))
        if withdrawn == self.lab.withdrawn_set():
            return False
        self.lab.set_withdrawn(withdrawn)
        return True
