"""`sixpn host init` (a host's config, its NATS server's config, its systemd units) and `sixpn host credentials`
(the operator mints a NATS password for a host, the operator or the cluster's routes). docs/fleet.md."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from catalog import ConfigError, default_regions, natsconf
from catalog.fleetconfig import CatalogConfig, HostConfig, read_credentials, render_host_config, write_private
from sixpn.context import open_catalog
from sixpn.hostsetup import host_services, render_unit
from sixpn.output import emit
from sixpn.registry import Registry
from wgmesh import keys

DEFAULT_CONFIG_DIR = Path("/etc/sixpn")
DEFAULT_STATE_DIR = Path("/var/lib/sixpn")


def register(cli: Registry) -> None:
    init = cli.verb("host", "init", "write this host's config (and its NATS server's) and print its systemd units",
                    host_init)
    init.add_argument("name", help="the host's name (lowercase letters, digits, dashes), e.g. worker-gru")
    init.add_argument("--role", required=True, choices=["worker", "edge", "gateway", "operator"])
    init.add_argument("--region", required=True, help="region code, e.g. gru")
    init.add_argument("--underlay", default="", help="the host's underlay address (other hosts reach it there)")
    init.add_argument("--nats-server", dest="nats_servers", action="append", default=[], metavar="NAME,REGION,ADDR",
                      help="a server of the NATS cluster (repeat for each; one per region); a host named here "
                           "runs that server")
    init.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR, help="default /etc/sixpn")
    init.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="default /var/lib/sixpn")
    init.add_argument("--credentials", type=Path,
                      help="this host's NATS credentials file (default CONFIG_DIR/nats.creds; from "
                           "`sixpn host credentials`)")
    init.add_argument("--users", type=Path, help="the cluster's users table (from `sixpn host credentials`); "
                                                 "needed on a host that runs a NATS server")
    init.add_argument("--route-credentials", type=Path,
                      help="the cluster's route credentials (`sixpn host credentials --role route`); needed on a "
                           "host that runs a NATS server")
    init.add_argument("--cluster-name", default=natsconf.DEFAULT_CLUSTER)
    init.add_argument("--embedded", action="store_true", help="a single host: an embedded catalog, no NATS")
    init.add_argument("--write-units", type=Path, metavar="DIR",
                      help="also write the units there (e.g. /etc/systemd/system)")

    reg = cli.verb("host", "register", "register a host in the catalog (operator): its role, region, underlay address "
                                       "and WireGuard public key (printed by `sixpn host init`)", host_register)
    reg.add_argument("name")
    reg.add_argument("--role", required=True, choices=["worker", "edge", "gateway"])
    reg.add_argument("--region", required=True)
    reg.add_argument("--underlay", required=True)
    reg.add_argument("--public-key", default="", help="the host's WireGuard public key (base64)")
    listed = cli.verb("host", "list", "list the catalog's hosts", host_list)
    listed.add_argument("--json", action="store_true", help="print JSON")

    creds = cli.verb("host", "credentials", "mint NATS credentials (operator): a 0600 creds file for the holder, "
                                            "the bcrypt hash into the cluster's users table", host_credentials)
    creds.add_argument("name", nargs="?", help="the host's name (role host)")
    creds.add_argument("--role", default="host", choices=list(natsconf.USER_ROLES))
    creds.add_argument("--users", type=Path, required=True, help="the users table to update (made if missing)")
    creds.add_argument("--out", type=Path, help="the creds file to write (default ./<user>.creds)")
    creds.add_argument("--force", action="store_true", help="replace existing credentials (rotate the password)")


def parse_server(text: str) -> natsconf.NatsServer:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(parts):
        raise ConfigError(f"--nats-server {text!r}: expected NAME,REGION,ADDRESS")
    name, region, address = parts
    natsconf.check_name(name, "NATS server name")
    default_regions().get(region)
    return natsconf.NatsServer(name, region, address)


def host_init(args: argparse.Namespace) -> None:
    name = natsconf.check_name(args.name)
    default_regions().get(args.region)
    config_dir: Path = args.config_dir.absolute()
    servers = tuple(parse_server(s) for s in args.nats_servers)
    if len({s.name for s in servers}) != len(servers):
        raise ConfigError("--nats-server: a server is named twice")
    if not args.embedded and not servers:
        raise ConfigError("a replicated catalog needs the cluster's servers (--nats-server NAME,REGION,ADDR), "
                          "or --embedded for a single host")
    if args.role != "operator" and not args.underlay:
        raise ConfigError("--underlay: a host needs its underlay address")
    cluster = natsconf.Cluster(servers, args.cluster_name)
    creds_path = (args.credentials or config_dir / "nats.creds").absolute()
    config = HostConfig(
        name=name, role=args.role, region=args.region, underlay=args.underlay,
        state_dir=args.state_dir.absolute(),
        catalog=CatalogConfig(mode="embedded" if args.embedded else "replicated",
                              nats=() if args.embedded else tuple(cluster.client_urls(args.region, default_regions())),
                              credentials=None if args.embedded else creds_path),
        path=config_dir / "host.toml",
    )
    runs_nats = not args.embedded and any(s.name == name for s in servers)
    if runs_nats:
        write_nats_conf(cluster, name, config, args.users, args.route_credentials, config_dir)
    config_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    assert config.path is not None
    config.path.write_text(render_host_config(config))
    print(f"# wrote {config.path}" + (f" and {config_dir / 'nats-server.conf'} (0600)" if runs_nats else ""))
    if not args.embedded and not creds_path.exists():
        print(f"# missing {creds_path}: on the operator's machine run "
              f"`sixpn host credentials {name if args.role != 'operator' else '--role admin'} --users users.toml "
              f"--out {creds_path.name}` and copy it here (mode 0600)", file=sys.stderr)
    if args.role != "operator":
        public = keys.load_or_create(config_dir / "wg.key").public  # made once, 0600; kept on a re-run
        print(f"# on the operator's seat: sixpn host register {name} --role {args.role} --region {args.region} "
              f"--underlay {args.underlay} --public-key {public}")
    sixpn = shutil.which("sixpn") or str(Path(sys.executable).parent / "sixpn")
    nats_server = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    units = host_services(config, config_dir, sixpn, nats_server, runs_nats)
    for unit in units:
        text = render_unit(unit)
        if args.write_units:
            args.write_units.mkdir(parents=True, exist_ok=True)
            (args.write_units / f"{unit.name}.service").write_text(text)
        print(f"\n# {unit.name}.service\n{text}", end="")
    if units:
        names = " ".join(f"{u.name}.service" for u in units)
        print(f"\n# then: systemctl daemon-reload && systemctl enable --now {names}")


def host_register(args: argparse.Namespace) -> None:
    with open_catalog(args) as cat:
        host = cat.register_host(natsconf.check_name(args.name), args.region, args.role, args.underlay,
                                 public_key=keys.check_public_key(args.public_key) if args.public_key else "")
    print(f"registered host {host.name} ({host.role}, {host.region}, {host.underlay}), mesh address "
          f"{host.mesh_address}")


def host_list(args: argparse.Namespace) -> None:
    with open_catalog(args) as cat:
        state = cat.snapshot()
    rows = [{"name": h.name, "role": h.role, "region": h.region, "underlay": h.underlay,
             "mesh_address": str(h.mesh_address), "public_key": h.public_key or "-"}
            for h in sorted(state.hosts.values(), key=lambda h: h.host_id)]
    emit(rows, ["name", "role", "region", "underlay", "mesh_address", "public_key"], args.json)


def write_nats_conf(cluster: natsconf.Cluster, name: str, config: HostConfig, users_path: Path | None,
                    route_path: Path | None, config_dir: Path) -> None:
    if users_path is None:
        raise ConfigError(f"{name} runs a NATS server: give the cluster's users table (--users)")
    users = natsconf.load_users(users_path)
    if not users:
        raise ConfigError(f"{users_path}: no users (mint them with `sixpn host credentials`)")
    route_password = None
    if natsconf.ROUTE_USER in users:
        if route_path is None:
            raise ConfigError("the cluster's routes need a password: give --route-credentials")
        route_password = read_credentials(route_path).password
    text = natsconf.render_server_conf(cluster, name, config.state_dir / "nats", users, route_password)
    write_private(config_dir / "nats-server.conf", text)


def host_credentials(args: argparse.Namespace) -> None:
    if args.role == "host":
        if not args.name:
            raise ConfigError("name the host: sixpn host credentials NAME --users FILE")
        user = natsconf.host_user(natsconf.check_name(args.name))
    else:
        if args.name:
            raise ConfigError(f"--role {args.role} takes no host name")
        user = natsconf.ADMIN_USER if args.role == "admin" else natsconf.ROUTE_USER
    out: Path = args.out or Path(f"{user}.creds")
    users = natsconf.load_users(args.users)
    if (out.exists() or user in users) and not args.force:
        raise ConfigError(f"{user} already has credentials ({out if out.exists() else args.users}); "
                          "--force replaces them (then re-render the NATS servers' configs)")
    creds = natsconf.mint_credentials(user)
    users[user] = natsconf.user_for(args.role, creds.password, args.name)
    write_private(out, natsconf.render_credentials(creds))
    write_private(args.users, natsconf.render_users(users))
    print(f"wrote {out} (0600) for NATS user {user}; its bcrypt hash is in {args.users}")
    if args.role == "host":
        print(f"copy {out} to {args.name} (e.g. /etc/sixpn/nats.creds, mode 0600) and re-run `sixpn host init` "
              "on the NATS servers' hosts so they know the new user (then: systemctl reload sixpn-nats)")


ERRORS = (ConfigError,)
