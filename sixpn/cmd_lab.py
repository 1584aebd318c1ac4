"""`sixpn lab ...` (the network-namespace lab), `sixpn scale count`, `sixpn machines stop|start|kill`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from netns_lab.errors import LabError
from netns_lab.lab import DEFAULT_CATALOG, Lab, default_lab_id
from netns_lab.machines import Machines
from netns_lab.plan import Node, nats_hosts
from sixpn.output import emit
from sixpn.registry import Registry

ERRORS = (LabError,)


def _lab_opt(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--lab", default=None, metavar="ID", help="lab id (default: $SIXPN_LAB, else sx)")
    return parser


def register(cli: Registry) -> None:
    up = _lab_opt(cli.verb("lab", "up", "build the lab (namespaces, underlay with latency, anycast, services)", lab_up))
    up.add_argument("topology", nargs="?", type=Path, help="topology TOML (default: the three-region lab)")
    up.add_argument("--no-services", action="store_true", help="do not start the hosts' sixpn services")
    up.add_argument("--wait", action="store_true",
                    help="also wait until the services serve (proxy :80, DNS :53, WireGuard interface)")
    up.add_argument("--catalog", choices=["embedded", "replicated"], default=None,
                    help="replicated: a replica per host over a NATS cluster (one server per region); embedded: "
                         "one shared SQLite catalog (default: $SIXPN_LAB_CATALOG, else "
                         f"{DEFAULT_CATALOG})")
    up.add_argument("--nats", action="store_true", help="run the NATS cluster even with the embedded catalog")
    _lab_opt(cli.verb("lab", "down", "remove everything of the lab (idempotent, cleans crashed runs)", lab_down))
    status = _lab_opt(cli.verb("lab", "status", "nodes, services, machines and anycast of the lab", lab_status))
    status.add_argument("--json", action="store_true", help="print JSON")
    ex = _lab_opt(cli.verb("lab", "exec", "run a command in a node's or machine's namespace", lab_exec))
    ex.add_argument("node", help="node name (edge-gru, client-sjc, ...), machine id, or bb")
    ex.add_argument("--as-app", action="store_true",
                    help="in a machine: run inside its sandbox as its app does (its uid, namespaces, environment)")
    ex.add_argument("argv", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    logs = _lab_opt(cli.verb("lab", "logs", "print the logs of the lab's services (of one node)", lab_logs))
    logs.add_argument("node", nargs="?", help="node name or machine id (default: all)")
    logs.add_argument("-n", "--lines", type=int, default=50, help="last N lines of each log (0: all)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing what is appended (tail -F)")
    for verb, what in (("cut", "take a node (or a whole region) off the backbone and the NATS cluster"),
                       ("heal", "put a cut node (or region) back")):
        p = _lab_opt(cli.verb("lab", verb, what, lab_cut if verb == "cut" else lab_heal))
        p.add_argument("node", help="a node (edge-gru), or a region code (gru): every host of the region")
        p.add_argument("--region", action="store_true", help="NODE is a region code (the default when it is one)")
    for verb, what in (("stop", "stop a host service (a stopped proxy withdraws its edge from anycast)"),
                       ("start", "start a host service stopped with `lab stop`")):
        p = _lab_opt(cli.verb("lab", verb, what, lab_service))
        p.add_argument("node")
        p.add_argument("service", help="mesh, dns or proxy")
    _lab_opt(cli.verb("lab", "env", "print `export SIXPN_STATE=... SIXPN_LAB=...` for the lab", lab_env))

    scale = _lab_opt(cli.verb("scale", "count", "run N machines of an app, spread over regions (in the lab)",
                              scale_count))
    scale.add_argument("count", type=int)
    scale.add_argument("--app", required=True)
    scale.add_argument("--region", help="comma-separated regions (default: every region with a worker)")
    scale.add_argument("--process-group", default="app")
    for verb, what in (("stop", "desired stopped; waits until the machine's host agent reports it stopped"),
                       ("start", "desired started (a start request even after a crash); waits until it is reported "
                                 "started"),
                       ("kill", "SIGKILL a machine's app (fault injection): its host agent reports the exit and "
                                "applies the app's restart policy")):
        p = _lab_opt(cli.verb("machines", verb, what, machines_verb))
        p.add_argument("id")


def lab_up(args: argparse.Namespace) -> None:
    started = time.monotonic()
    lab = Lab.up(args.topology, args.lab, host_services=not args.no_services, wait_ready=args.wait,
                 catalog=args.catalog, cluster=args.nats or None)
    nodes = len(lab.plan.nodes)
    print(f"lab {lab.lab_id} up in {time.monotonic() - started:.2f}s: {nodes} nodes, run dir {lab.run_dir}, "
          f"services: {', '.join(lab.groups()) or 'none'}")
    where = (f"a replica per host, NATS on {', '.join(n.name for n in _nats_hosts(lab))}" if lab.replicated
             else f"embedded, {lab.state_dir}")
    print(f"catalog: {where}   (eval $(sixpn lab env --lab {lab.lab_id}))")
    print("took " + ", ".join(f"{k} {v:.2f}s" for k, v in lab.timings.items()))
    if lab.not_ready:
        print(f"warning: not serving yet: {', '.join(lab.not_ready)} (see sixpn lab logs)", file=sys.stderr)


def _nats_hosts(lab: Lab) -> list[Node]:
    return nats_hosts(lab.plan) if lab.has_cluster else []


def lab_down(args: argparse.Namespace) -> None:
    lab_id = args.lab or default_lab_id()
    found = Lab.down(lab_id)
    print(f"lab {lab_id} down" + ("" if found else " (nothing was running)"))


def lab_status(args: argparse.Namespace) -> None:
    status = Lab(args.lab).status()
    if args.json:
        json.dump(status, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    print(f"lab {status['lab']}  run dir {status['run_dir']}  supervisor pid {status['supervisor_pid'] or 'DEAD'}")
    nats = status["nats"]
    if nats["servers"]:
        stream = nats["stream_seq"] if nats["stream_seq"] is not None else f"unreachable ({nats['error']})"
        print(f"catalog {status['catalog']}; NATS servers on {', '.join(nats['servers'])}; stream at seq {stream}")
    rows = []
    for node in status["nodes"]:
        svc = ",".join(_service_cell(k, v) for k, v in sorted(node["services"].items()))
        cut = "CUT" if node["cut"] else ("REGION CUT" if node["region_cut"] else "")
        rows.append({**node, "services": svc or "-",
                     "cut": cut or ("WITHDRAWN" if node.get("anycast_withdrawn") else "")})
    columns = ["name", "role", "region", "netns", "underlay4", "services", "cut"]
    if status["catalog"] == "replicated":
        columns[5:5] = ["replica_seq", "lag"]
        for row in rows:
            row.setdefault("replica_seq", "")
            row.setdefault("lag", "")
            if row["replica_seq"] is None:
                row["replica_seq"] = "none"
    emit(rows, columns, False)
    anycast = status["anycast"]
    print(f"\nanycast {anycast['ipv4']} / {anycast['ipv6']}: " +
          ", ".join(f"{r}->{e or 'none'}" for r, e in anycast["edge_for"].items()))
    if status["machines"]:
        print()
        emit(status["machines"], ["id", "app", "region", "host", "address", "desired", "state", "pid", "restarts",
                                  "exit_code", "health"], False)


def _service_cell(name: str, state: dict[str, object]) -> str:
    flags = [] if state.get("running") else ["stopped" if state.get("stopped") else "dead"]
    if state.get("restarts"):
        flags.append(f"{state['restarts']} restarts")
    return f"{name}({', '.join(flags)})" if flags else name


def lab_exec(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise LabError("usage: sixpn lab exec NODE -- COMMAND [ARGS...]")
    lab = Lab(args.lab)
    full = lab.app_exec_argv(args.node, argv) if args.as_app else lab.exec_argv(args.node, argv)
    sys.stdout.flush()
    os.execvp(full[0], full)


def lab_logs(args: argparse.Namespace) -> None:
    lab = Lab(args.lab)
    logs = sorted(lab.logs_dir.glob(f"{args.node}.*.log" if args.node else "*.log"))
    if args.node and not logs:
        lab.netns_of(args.node)  # an unknown name is an error; a known one may simply have no logs yet
    if args.follow and logs:
        argv = ["tail", "-n", str(args.lines), "-F", *(str(p) for p in logs)]
        sys.stdout.flush()
        os.execvp(argv[0], argv)
    for path in logs:
        lines = path.read_text(errors="replace").splitlines()
        print(f"==> {path} <==")
        for line in lines[-args.lines:] if args.lines else lines:
            print(line)


def _cut_target(lab: Lab, args: argparse.Namespace) -> str:
    if args.region:
        lab.plan.region(args.node)  # an unknown region is an error naming the lab's regions
        return f"region {args.node}"
    return f"region {args.node}" if any(r.code == args.node for r in lab.plan.regions) else args.node


def lab_cut(args: argparse.Namespace) -> None:
    lab = Lab(args.lab)
    what = _cut_target(lab, args)
    lab.cut(args.node)
    servers = [n.name for n in _nats_hosts(lab) if args.node in (n.name, n.region)]
    nats = f"; NATS server on {', '.join(servers)} cut with it" if servers else ""
    print(f"{what} cut off the backbone{nats}; anycast: {_anycast(lab)}")


def lab_heal(args: argparse.Namespace) -> None:
    lab = Lab(args.lab)
    what = _cut_target(lab, args)
    lab.heal(args.node)
    print(f"{what} back on the backbone; anycast: {_anycast(lab)}")


def _anycast(lab: Lab) -> str:
    return ", ".join(f"{r}->{e or 'none'}" for r, e in lab.anycast_choice().items())


def lab_service(args: argparse.Namespace) -> None:
    lab = Lab(args.lab)
    if args.verb == "stop":
        lab.stop_service(args.node, args.service)
    else:
        lab.start_service(args.node, args.service)
    print(f"{args.node} {args.service} {'stopped' if args.verb == 'stop' else 'started'}; anycast: {_anycast(lab)}")


def lab_env(args: argparse.Namespace) -> None:
    lab = Lab(args.lab)
    env = lab.env()
    print("export " + " ".join(f"{k}={v}" for k, v in env.items()) + ("" if "SIXPN_STATE" in env
                                                                       else "; unset SIXPN_STATE"))


def scale_count(args: argparse.Namespace) -> None:
    regions = [r.strip() for r in args.region.split(",") if r.strip()] if args.region else None
    result = Machines(Lab(args.lab)).scale(args.app, args.count, regions, args.process_group)
    # (the host agents made it so: each added machine was reported started, each removed one stopped)
    for m in result.removed:
        print(f"destroyed {m.id} ({m.region}, {m.host})")
    for m in result.added:
        print(f"started {m.id} ({m.region}, {m.host}) at {m.address}")
    for mid in result.not_listening:
        print(f"warning: {mid} is running but not listening on its internal port yet", file=sys.stderr)
    if not result.added and not result.removed:
        print(f"app {args.app} already has {args.count} machine(s) there")


def machines_verb(args: argparse.Namespace) -> None:
    machines = Machines(Lab(args.lab))
    if args.verb == "kill":
        pid = machines.kill(args.id)
        print(f"killed {args.id}'s app (pid {pid}); its host agent reports the exit and applies the restart policy")
        return
    machine = machines.stop(args.id) if args.verb == "stop" else machines.start(args.id)
    print(f"{machine.id} {machine.state}")
