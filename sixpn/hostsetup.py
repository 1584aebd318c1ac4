"""Setting up a host of a real fleet (pure): the services a host of each role runs, their command lines and
their systemd units. `sixpn host init` (cmd_fleet.py) writes the files and prints the units; docs/fleet.md
walks through three hosts.

| service | runs on | command |
|---|---|---|
| `sixpn-nats` | the cluster's NATS servers' hosts (one a region) | `nats-server -c CONF_DIR/nats-server.conf` |
| `sixpn-replicate` | every host (replicated catalog) | `sixpn --host-config F catalog replicate` |
| `sixpn-agent` | workers | `sixpn --host-config F host agent` |
| `sixpn-dns` | workers, gateways | `sixpn --host-config F dns serve --host NAME` |
| `sixpn-proxy` | edges | `sixpn --host-config F proxy serve --host NAME --listen 0.0.0.0:80 --listen [::]:80` |
| `sixpn-mesh` | every host | `sixpn --host-config F mesh agent --host NAME --interface wg6pn --key-file ...` |

An `operator` seat (the CLI on a laptop or a bastion) runs no service.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from catalog.fleetconfig import HostConfig

MESH_INTERFACE = "wg6pn"


@dataclass(frozen=True)
class HostService:
    name: str  # systemd unit name without .service
    description: str
    argv: tuple[str, ...]
    after: tuple[str, ...] = ()  # units this one starts after (and wants)


def host_services(config: HostConfig, config_dir: Path, sixpn: str, nats_server: str | None,
                  runs_nats: bool) -> list[HostService]:
    """The services of a host, in start order. `sixpn`/`nats_server`: the binaries' absolute paths."""
    if config.role == "operator":
        return []
    assert config.path is not None, "a host config is written before its units"
    base = (sixpn, "--host-config", str(config.path))
    out: list[HostService] = []
    deps: tuple[str, ...] = ()
    if runs_nats:
        if nats_server is None:
            raise ValueError("nats-server binary unknown")
        out.append(HostService("sixpn-nats", f"NATS server of the sixpn catalog ({config.region})",
                               (nats_server, "-c", str(config_dir / "nats-server.conf"))))
    if config.catalog.replicated:
        out.append(HostService("sixpn-replicate", "sixpn catalog replica (follows the NATS stream)",
                               (*base, "catalog", "replicate"), tuple(s.name for s in out)))
        deps = ("sixpn-replicate",)
    if config.role == "worker":
        out.append(HostService("sixpn-agent", "sixpn host agent (this host's machines)", (*base, "host", "agent"),
                               deps))
    if config.role in ("worker", "gateway"):
        out.append(HostService("sixpn-dns", "sixpn .internal DNS", (*base, "dns", "serve", "--host", config.name),
                               deps))
    if config.role == "edge":
        out.append(HostService("sixpn-proxy", "sixpn edge proxy",
                               (*base, "proxy", "serve", "--host", config.name, "--listen", "0.0.0.0:80",
                                "--listen", "[::]:80"), deps))
    out.append(HostService("sixpn-mesh", "sixpn WireGuard mesh agent",
                           (*base, "mesh", "agent", "--host", config.name, "--interface", MESH_INTERFACE,
                            "--key-file", str(config_dir / "wg.key")), deps))
    return out


def _quote(arg: str) -> str:
    """systemd's ExecStart quoting: plain words bare, anything else in double quotes."""
    if arg and all(c.isalnum() or c in "-_./:=@,+[]" for c in arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_unit(service: HostService) -> str:
    wants = " ".join(f"{u}.service" for u in service.after)
    lines = [
        "[Unit]",
        f"Description={service.description}",
        "After=network-online.target" + (f" {wants}" if wants else ""),
        "Wants=network-online.target" + (f" {wants}" if wants else ""),
        "",
        "[Service]",
        f"ExecStart={' '.join(_quote(a) for a in service.argv)}",
        "Restart=always",
        "RestartSec=1",
        "Environment=PYTHONUNBUFFERED=1",
        "LimitNOFILE=65536",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"
