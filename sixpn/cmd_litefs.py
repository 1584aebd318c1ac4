"""`sixpn litefs-proxy serve|replicate|demo-app`: the LiteFS-compatible proxy (litefs_proxy/)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from pathlib import Path

from litefs_proxy.config import Config, load_config
from litefs_proxy.errors import LitefsProxyError
from sixpn.registry import Registry

ERRORS = (LitefsProxyError,)
GROUP = "litefs-proxy"


def register(cli: Registry) -> None:
    serve = cli.verb(GROUP, "serve", "run the LiteFS-compatible read/write proxy (and the mount stand-in if "
                     "the config has a `replicator` section)", serve_cmd)
    _common(serve)
    serve.add_argument("--exec", dest="exec_cmd", metavar="CMD",
                       help="start the app with /bin/sh -c CMD (LiteFS's exec); stop when it exits")

    rep = cli.verb(GROUP, "replicate", "run only the mount stand-in (replicator) of a config", replicate_cmd)
    _common(rep)

    check = cli.verb(GROUP, "check", "load a config and print what it means (errors name the key)", check_cmd)
    check.add_argument("--config", type=Path, required=True, help="litefs.yml (YAML) or a .toml file")
    check.add_argument("--no-expand-env", action="store_true", help="do not expand environment variables")

    demo = cli.verb(GROUP, "demo-app", "a tiny SQLite notes app to put behind the proxy (lab, tests)", demo_cmd)
    demo.add_argument("--db", type=Path, required=True, help="the database file inside the mount")
    demo.add_argument("--host", default="")
    demo.add_argument("--port", type=int, default=8081)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="litefs.yml (YAML) or a .toml file")
    parser.add_argument("--mount", type=Path, help="the LiteFS mount directory (default: the config's fuse.dir)")
    parser.add_argument("--debug", action="store_true", help="log every request's decision")
    parser.add_argument("--no-expand-env", action="store_true",
                        help="do not expand environment variables in the config (LiteFS's -no-expand-env)")


def _setup(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass


def _load(args: argparse.Namespace) -> Config:
    config = load_config(args.config, expand=not getattr(args, "no_expand_env", False))
    if getattr(args, "debug", False) and config.proxy is not None:
        config = dataclasses.replace(config, proxy=dataclasses.replace(config.proxy, debug=True))
    return config


def serve_cmd(args: argparse.Namespace) -> int:
    from litefs_proxy.service import run

    config = _load(args)
    _setup(args)
    return asyncio.run(run(config, mount=args.mount, exec_cmd=args.exec_cmd))


def replicate_cmd(args: argparse.Namespace) -> int:
    from litefs_proxy.errors import ConfigError
    from litefs_proxy.service import run

    config = _load(args)
    if config.replicator is None:
        raise ConfigError("replicator: missing section (role, addr, primary-url)")
    _setup(args)
    return asyncio.run(run(config, mount=args.mount, proxy=False))


def check_cmd(args: argparse.Namespace) -> None:
    config = _load(args)
    p = config.proxy
    if p is None:
        print("proxy: none (no proxy.target: skipped, as LiteFS does)")
    else:
        print(f"proxy: addr {p.addr} -> target {p.target}, db {p.db!r}, mode {p.mode}, mount {config.mount}")
        print(f"  passthrough {[g.pattern for g in p.passthrough]}, "
              f"always-forward {[g.pattern for g in p.always_forward]}")
        print(f"  max-lag {p.max_lag:g}s, primary-redirect-timeout {p.primary_redirect_timeout:g}s")
    if config.replicator is not None:
        r = config.replicator
        print(f"replicator: {r.role} as {r.hostname!r}, addr {r.addr}, primary-url {r.primary_url or '-'}")


def demo_cmd(args: argparse.Namespace) -> int:
    from litefs_proxy import demoapp

    _setup(args)
    asyncio.run(demoapp.serve(args.db, args.host, args.port))
    return 0
