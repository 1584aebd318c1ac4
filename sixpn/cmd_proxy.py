"""`sixpn proxy serve|cert`: the anycast edge proxy (edge_proxy/)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_proxy.config import ConfigError, ProxyConfig, from_doc, load_config
from edge_proxy.errors import EdgeProxyError
from sixpn.context import state_dir
from sixpn.registry import Registry

ERRORS = (EdgeProxyError,)


def register(cli: Registry) -> None:
    serve = cli.verb("proxy", "serve", "run the edge proxy (HTTP/HTTPS) for the catalog's apps", proxy_serve)
    serve.add_argument("--host", help="this edge's host in the catalog (its region is used)")
    serve.add_argument("--region", help="the edge's region when run standalone (no --host)")
    serve.add_argument("--listen", action="append", metavar="ADDR:PORT", help="plain HTTP listener (repeatable)")
    serve.add_argument("--tls-listen", action="append", metavar="ADDR:PORT", help="HTTPS listener (repeatable)")
    serve.add_argument("--cert-dir", type=Path, help="directory of <hostname>.crt/.key pairs for TLS (SNI)")
    serve.add_argument("--no-http2", action="store_true", help="offer only HTTP/1.1 in ALPN on TLS listeners")
    serve.add_argument("--domain", help="app domain: <app>.<domain> (default sixpn.test)")
    serve.add_argument("--metrics", metavar="ADDR:PORT",
                       help="Prometheus metrics at http://ADDR:PORT/metrics (default 127.0.0.1:9091; 'off')")
    serve.add_argument("--workers", type=int, help="worker processes sharing the ports (SO_REUSEPORT)")
    serve.add_argument("--upstream-override", action="append", metavar="ID=HOST:PORT", default=[],
                       help="reach a machine (by id or 6PN address) at HOST:PORT instead (standalone/tests)")
    serve.add_argument("--access-log", metavar="PATH", help="'-' for stderr (default), 'off', or a file")
    serve.add_argument("--static-rtt", action="store_true", help="use the region RTT matrix, do not measure")
    serve.add_argument("--no-lane", action="store_true",
                       help="parse every request with httptools (no lane for simple GETs; for comparison)")
    serve.add_argument("--config", type=Path, help="TOML file with the same settings (flags win)")

    cert = cli.verb("proxy", "cert", "make a self-signed certificate for a hostname (lab TLS)", proxy_cert)
    cert.add_argument("hostname")
    cert.add_argument("--out", type=Path, required=True, help="certificate directory (as given to --cert-dir)")
    cert.add_argument("--days", type=int, default=365)


def build_config(args: argparse.Namespace) -> ProxyConfig:
    overrides: dict[str, object] = {
        "host": args.host, "region": args.region, "domain": args.domain,
        "metrics_listen": "" if args.metrics == "off" else args.metrics,
        "workers": args.workers,
        "listen": tuple(args.listen) if args.listen else None,
        "tls_listen": tuple(args.tls_listen) if args.tls_listen else None,
        "cert_dir": str(args.cert_dir) if args.cert_dir else None,
    }
    if args.access_log is not None:
        overrides["access_log"] = "" if args.access_log == "off" else args.access_log
    if args.static_rtt:
        overrides["measure_rtt"] = False
    if args.no_lane:
        overrides["lane"] = False
    if args.no_http2:
        overrides["http2"] = False
    if args.upstream_override:
        pairs = []
        for item in args.upstream_override:
            key, sep, target = item.partition("=")
            if not sep or ":" not in target:
                raise ConfigError(f"--upstream-override {item!r}: expected ID=HOST:PORT")
            pairs.append((key, target))
        overrides["upstream_override"] = tuple(pairs)
    config = load_config(args.config, **overrides) if args.config else from_doc({}, **overrides)
    if config.tls_listen and not config.cert_dir:
        raise ConfigError("--tls-listen needs --cert-dir")
    if config.workers < 1:
        raise ConfigError("--workers must be at least 1")
    return config


def proxy_serve(args: argparse.Namespace) -> int:
    from edge_proxy.service import serve

    return serve(build_config(args), state_dir(args))


def proxy_cert(args: argparse.Namespace) -> None:
    from edge_proxy.tls import make_self_signed

    crt, key = make_self_signed(args.hostname, args.out, args.days)
    print(f"wrote {crt} and {key}")
