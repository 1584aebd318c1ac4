"""Benchmark of the host agent in the lab (examples/three-regions.toml): a machine's app SIGKILLed ->
(a) its exit in the catalog (the agent's report), (b) its address gone from `dig web.internal` run in a machine on
another worker, (c) restarted and reported `started` again (policy "always": the first kill is restarted after
0.1 s, the next ones, seconds apart, are a crash loop and back off, doubling up to 5 s); then the agent restarted
under a sequential curl load through the edge: same pids, failed requests.
Run as root: `python bench/agent_exit.py [ROUNDS]`. Ends with one `key=value ...` line."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from catalog import Catalog
from netns_lab.lab import Lab
from netns_lab.machines import Machines

LAB_ID = "ba"
TOPOLOGY = Path(__file__).resolve().parent.parent / "examples" / "three-regions.toml"
CONFIG = {"http_service": {"internal_port": 8080}, "restart": [{"policy": "always"}]}


def wait(check: object, timeout: float = 10.0) -> float:
    t0 = time.monotonic()
    while not check():  # type: ignore[operator]
        if time.monotonic() - t0 > timeout:
            raise SystemExit("timed out")
    return time.monotonic() - t0


def main(rounds: int) -> int:
    lab = Lab.up(TOPOLOGY, LAB_ID, wait_ready=True)
    try:
        with lab.catalog() as cat:
            cat.create_app("web", "acme", config=CONFIG)
        victim, witness = Machines(lab).scale("web", 2, ["gru", "gig"]).added
        cat = Catalog(lab.state_dir)

        def in_dns() -> bool:
            out = lab.exec(witness.id, ["dig", "+short", "+time=1", "+tries=1", "AAAA", "web.internal"]).stdout
            return victim.address in out

        to_catalog, to_dns, to_started = [], [], []
        for i in range(rounds):
            wait(in_dns)
            t0 = time.monotonic()
            Machines(lab).kill(victim.id)
            wait(lambda: cat.machine(victim.id).state == "stopped")
            to_catalog.append(time.monotonic() - t0)
            wait(lambda: not in_dns())
            to_dns.append(time.monotonic() - t0)
            wait(lambda i=i: (m := cat.machine(victim.id)).state == "started" and m.restarts == i + 1)
            to_started.append(time.monotonic() - t0)
        pids = Machines(lab).pid(victim.id), Machines(lab).pid(witness.id)
        loop = ("bad=0; for i in $(seq 300); do c=$(curl -s -o /dev/null -m 5 -w '%{http_code}' "
                "-H 'Host: web.sixpn.test' http://192.0.2.1/); [ \"$c\" = 200 ] || bad=$((bad+1)); done; echo $bad")
        with subprocess.Popen(lab.exec_argv("client-gru", ["sh", "-c", loop]), stdout=subprocess.PIPE,
                              text=True) as load:
            t0 = time.monotonic()
            lab.stop_service("worker-gru", "agent")
            lab.start_service("worker-gru", "agent")
            back = time.monotonic() - t0
            failed = int(load.communicate(timeout=120)[0])
        same = pids == (Machines(lab).pid(victim.id), Machines(lab).pid(witness.id))
    finally:
        Lab.down(LAB_ID)

    def ms(values: list[float], q: float) -> float:
        return 1000 * statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 \
            else 1000 * values[0]

    print(f"{rounds} kills: catalog p50 {ms(to_catalog, 50):.0f} ms p99 {ms(to_catalog, 99):.0f} ms; "
          f"dig p50 {ms(to_dns, 50):.0f} ms p99 {ms(to_dns, 99):.0f} ms; "
          f"first restart reported started {to_started[0] * 1000:.0f} ms (later ones back off as a crash loop: "
          f"p50 {ms(to_started, 50):.0f} ms)")
    print(f"agent restart: back in {back:.2f} s, same pids {same}, failed requests {failed}/300")
    print(f"exit_to_catalog_p50_ms={ms(to_catalog, 50):.1f} exit_to_catalog_p99_ms={ms(to_catalog, 99):.1f} "
          f"exit_to_dig_p50_ms={ms(to_dns, 50):.1f} exit_to_dig_p99_ms={ms(to_dns, 99):.1f} "
          f"exit_to_first_restart_ms={to_started[0] * 1000:.1f} agent_restart_same_pids={int(same)} "
          f"agent_restart_failed_requests={failed}")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
