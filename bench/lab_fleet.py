"""Benchmark of the lab as a fleet (the replicated catalog): `lab up` with its NATS cluster (one server per
region across the emulated RTT), phase by phase, and a write by the operator seen in each host's replica.
Run as root: `python bench/lab_fleet.py [RUNS]`. Ends with one `key=value ...` line.

The write goes in through the door to gru's server (the operator sits outside the regions, ~0 ms from each
server); it is acknowledged once a quorum of the stream's replicas have it, and each host's replicator then
applies it from its own region's server. Seen = the host's `catalog.db` has it (meta seq)."""

from __future__ import annotations

import statistics
import sys
import time

from netns_lab import fleet
from netns_lab.lab import Lab

LAB_ID = "bf"
WRITES = 20


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def seen_times(lab: Lab) -> dict[str, list[float]]:
    """Per region: ms from the operator's write call to each host's replica there having applied it."""
    hosts = lab.plan.hosts()
    out: dict[str, list[float]] = {h.region: [] for h in hosts}
    with lab.catalog() as cat:
        for i in range(WRITES):
            sent = time.monotonic()
            cat.create_org(f"bench{i}")
            seq = cat.replica_seq()  # type: ignore[attr-defined]
            pending = {h.name for h in hosts}
            deadline = sent + 10
            while pending and time.monotonic() < deadline:
                for name in list(pending):
                    if (fleet.replica_seq(fleet.host_dir(lab.run_dir, name) / "state") or 0) >= seq:
                        out[lab.plan.node(name).region].append((time.monotonic() - sent) * 1000)
                        pending.discard(name)
                time.sleep(0.0005)
    return out


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    ups, readies, clusters, registers = [], [], [], []
    by_region: dict[str, list[float]] = {}
    for run in range(runs):
        start = time.monotonic()
        lab = Lab.up(None, LAB_ID, catalog="replicated")
        ups.append(time.monotonic() - start)
        try:
            lab.wait_ready()
            readies.append(time.monotonic() - start)
            clusters.append(lab.timings.get("cluster", 0.0))
            registers.append(lab.timings.get("register", 0.0))
            print(f"run {run + 1}: up {ups[-1]:.2f}s, serving {readies[-1]:.2f}s, "
                  + ", ".join(f"{k} {v:.2f}s" for k, v in lab.timings.items()), flush=True)
            if run == runs - 1:
                by_region = seen_times(lab)
        finally:
            Lab.down(LAB_ID)
    for region, times in sorted(by_region.items()):
        print(f"write via gru's server -> seen in {region} replicas: p50 {median(times):.1f} ms, "
              f"max {max(times):.1f} ms ({len(times)} samples)")
    print(f"up_s_median={median(ups):.2f} up_s_max={max(ups):.2f} serving_s_median={median(readies):.2f} "
          f"cluster_s_median={median(clusters):.2f} register_s_median={median(registers):.2f} "
          + " ".join(f"seen_{r}_p50_ms={median(t):.1f}" for r, t in sorted(by_region.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
