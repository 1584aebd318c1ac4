"""dnsperf against dns6pn and against NSD serving the same `.internal` names, in one run.

A bench catalog (3 regions, 4 apps, 60 machines) is made in a temporary state dir; `sixpn dns serve` runs on
loopback with --source-override (dnsperf's source is 127.0.0.1, so every query is scoped to the acme
network as if sent from one of its machines). NSD gets a zone file holding exactly the records dns6pn
answers for the query list (built by asking dns6pn's core), one server process like dns6pn, no rate
limiting. Throughput: the median of several dnsperf runs per server, interleaved (the machine is shared, so
noise should hit both alike). Latency: the p99 of one dnsperf -v run each (per-query latencies; the
printing slows dnsperf, so this pass is a little lighter than the throughput runs).

Also reported: queries answered per CPU-second of each server (from /proc), which a busy machine distorts
far less than qps.

Ends with one line: `dns6pn_qps=... nsd_qps=... ratio=... dns6pn_p99_ms=... nsd_p99_ms=...
dns6pn_q_per_cpu_s=... nsd_q_per_cpu_s=... cpu_ratio=... names=... load1=...` (the 1-minute load average
when it started: on a busy machine the qps figures mean little).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.rdatatype

from catalog import Catalog
from dns6pn import Engine

APPS = {"web": 30, "api": 20, "db": 6, "worker": 4}
WORKERS = {"worker-gru": "gru", "worker-ams": "ams", "worker-sjc": "sjc"}


def build_catalog(state: Path) -> tuple[Catalog, str]:
    cat = Catalog(state)
    cat.create_org("acme")
    for name, region in WORKERS.items():
        cat.register_host(name, region, "worker", f"192.0.2.{len(cat.snapshot().hosts) + 1}")
    first = ""
    for app, count in APPS.items():
        cat.create_app(app, "acme")
        for i in range(count):
            host = list(WORKERS)[i % len(WORKERS)]
            role = "primary" if i == 0 else "replica"
            machine = cat.create_machine(app, host, state="started", metadata={"role": role})
            first = first or machine.address
    return cat, first


def query_names(cat: Catalog) -> list[tuple[str, str]]:
    state = cat.snapshot()
    names: list[tuple[str, str]] = [("_apps.internal", "TXT"), ("_instances.internal", "TXT"),
                                    ("nosuchapp.internal", "AAAA"), ("web.internal", "A")]
    for app in APPS:
        names += [(f"{app}.internal", "AAAA"), (f"vms.{app}.internal", "TXT"), (f"regions.{app}.internal", "TXT"),
                  (f"primary.role.kv._metadata.{app}.internal", "AAAA")]
        names += [(f"{region}.{app}.internal", "AAAA") for region in sorted(set(WORKERS.values()))]
        names += [(f"{m.id}.vm.{app}.internal", "AAAA") for m in state.machines_of(app)[:3]]
        names.append((f"nope.vm.{app}.internal", "AAAA"))
    return names


def zone_text(cat: Catalog, source: str, names: list[tuple[str, str]]) -> str:
    """The records dns6pn gives for each name, as an NSD zone file (so both serve the same answers)."""
    engine = Engine(cat.snapshot(), source_override=source)
    lines = {"$ORIGIN internal.", "$TTL 5"}
    body: set[str] = set()
    for name, rdtype in [*names, ("internal", "SOA")]:
        reply = engine.handle(dns.message.make_query(name, rdtype).to_wire(), source, tcp=True)
        assert isinstance(reply, bytes)
        for rrset in dns.message.from_wire(reply).answer:
            body.add(rrset.to_text())
    # ENTs of the kv names exist in both: NSD derives them from the records below them.
    return "\n".join(sorted(lines, reverse=True) + sorted(body, key=lambda line: "SOA" not in line)) + "\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_answering(port: int, timeout: float = 20.0) -> None:
    import dns.query

    deadline = time.monotonic() + timeout
    while True:
        try:
            dns.query.udp(dns.message.make_query("web.internal", "AAAA"), "127.0.0.1", port=port, timeout=0.5)
            return
        except (OSError, dns.exception.Timeout):
            if time.monotonic() > deadline:
                raise SystemExit(f"server on port {port} never answered") from None


def dnsperf(port: int, datafile: Path, seconds: int, verbose: bool) -> tuple[float, float | None]:
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(datafile), "-l", str(seconds), "-c", "4",
            "-q", "200"]
    out = subprocess.run([*argv, "-v"] if verbose else argv, capture_output=True, text=True, check=True).stdout
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    if not verbose:
        return qps, None
    latencies = sorted(float(m) for m in re.findall(r"^> \S+ \S+ \S+ ([\d.]+)$", out, re.M))
    return qps, latencies[int(0.99 * (len(latencies) - 1))] * 1000 if latencies else None


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its descendants (NSD answers from a forked child)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return total / os.sysconf("SC_CLK_TCK")


def measure(servers: dict[str, tuple[int, int]], datafile: Path, seconds: int,
            rounds: int) -> dict[str, tuple[float, float, float]]:
    """Per server (port, pid): median qps over `rounds` interleaved runs (the machine is shared: alternate so
    that noise hits both alike), queries per CPU-second over those runs (what load does not distort), and
    the p99 of one verbose run."""
    runs: dict[str, list[float]] = {name: [] for name in servers}
    cpu: dict[str, float] = dict.fromkeys(servers, 0.0)
    for index in range(rounds):
        order = list(servers) if index % 2 == 0 else list(reversed(servers))
        for name in order:
            port, pid = servers[name]
            before = cpu_seconds(pid)
            runs[name].append(dnsperf(port, datafile, seconds, verbose=False)[0])
            cpu[name] += cpu_seconds(pid) - before
    result = {}
    for name, (port, _pid) in servers.items():
        _, p99 = dnsperf(port, datafile, max(2, seconds // 2), verbose=True)
        per_cpu = sum(runs[name]) * seconds / cpu[name] if cpu[name] else float("nan")
        result[name] = statistics.median(runs[name]), per_cpu, p99 or float("nan")
        print(f"{name}: qps per run {', '.join(f'{q:,.0f}' for q in runs[name])}; "
              f"{per_cpu:,.0f} queries per CPU-second")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=4, help="length of each throughput run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved throughput runs per server")
    args = parser.parse_args()
    for tool in ("dnsperf", "nsd"):
        if shutil.which(tool) is None:
            print(f"skipped=1 reason=no_{tool}")
            return 0
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="dns-bench-") as tmp_name:
        tmp = Path(tmp_name)
        cat, source = build_catalog(tmp / "state")
        names = query_names(cat)
        datafile = tmp / "queries.txt"
        datafile.write_text("".join(f"{n} {t}\n" for n, t in names))
        (tmp / "internal.zone").write_text(zone_text(cat, source, names))
        cat.close()
        ours, theirs = free_port(), free_port()
        (tmp / "nsd.conf").write_text(NSD_CONF.format(dir=tmp, port=theirs))
        check = subprocess.run(["nsd-checkzone", "internal", str(tmp / "internal.zone")], capture_output=True,
                               text=True)
        if check.returncode:
            raise SystemExit(f"zone rejected: {check.stdout}{check.stderr}")
        procs = [
            subprocess.Popen([sys.executable, "-m", "sixpn.cli", "--state", str(tmp / "state"), "dns", "serve",
                              "--listen", f"127.0.0.1:{ours}", "--source-override", source, "--log-level",
                              "warning"]),
            subprocess.Popen(["nsd", "-d", "-c", str(tmp / "nsd.conf")], stderr=subprocess.DEVNULL),
        ]
        try:
            wait_answering(ours)
            wait_answering(theirs)
            dnsperf(ours, datafile, 1, verbose=False)  # warm both: every answer encoded once
            dnsperf(theirs, datafile, 1, verbose=False)
            result = measure({"dns6pn": (ours, procs[0].pid), "nsd": (theirs, procs[1].pid)}, datafile,
                             args.seconds, args.rounds)
            (our_qps, our_eff, our_p99), (nsd_qps, nsd_eff, nsd_p99) = result["dns6pn"], result["nsd"]
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)
    print(f"dns6pn: {our_qps:,.0f} qps, p99 {our_p99:.3f} ms")
    print(f"nsd:    {nsd_qps:,.0f} qps, p99 {nsd_p99:.3f} ms")
    print(f"dns6pn_qps={our_qps:.0f} nsd_qps={nsd_qps:.0f} ratio={our_qps / nsd_qps:.2f} "
          f"dns6pn_p99_ms={our_p99:.3f} nsd_p99_ms={nsd_p99:.3f} dns6pn_q_per_cpu_s={our_eff:.0f} "
          f"nsd_q_per_cpu_s={nsd_eff:.0f} cpu_ratio={our_eff / nsd_eff:.2f} names={len(names)} "
          f"load1={load_before:.1f}")
    return 0


NSD_CONF = """server:
  ip-address: 127.0.0.1@{port}
  username: ""
  zonesdir: "{dir}"
  pidfile: "{dir}/nsd.pid"
  xfrdfile: "{dir}/xfrd.state"
  zonelistfile: "{dir}/zone.list"
  xfrdir: "{dir}"
  logfile: "{dir}/nsd.log"
  server-count: 1
  verbosity: 0
  rrl-ratelimit: 0
  rrl-whitelist-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: internal
  zonefile: internal.zone
"""

if __name__ == "__main__":
    sys.exit(main())
