"""`wg` and `wireguard-go`, driven as subprocesses in the current namespace.

Secrets reach `wg` only as a file path (`private-key FILE`, wg(8)); argv holds public keys, addresses and
ports, which `ps` may show. Per-peer ops of one reconcile go into one `wg set` call (wg(8) accepts many
`peer` clauses), so a change costs one process spawn however many peers it touches.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from catalog.private import open_append
from wgmesh.dump import ObservedWg, parse_dump
from wgmesh.errors import MeshError
from wgmesh.plan import RemovePeer, SetListenPort, SetPeer, SetPrivateKey, WgOp

WG = "wg"
SOCKET_DIR = Path("/var/run/wireguard")
_PR_SET_PDEATHSIG = 1
#: Peers per `wg set` call: keeps argv far below ARG_MAX on a 1,000-peer apply.
BATCH = 256


def _run(argv: Sequence[str], what: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MeshError(f"{what}: {exc}") from None
    if done.returncode != 0:
        # wg's stderr names the interface or a peer's public key, never the private key.
        raise MeshError(f"{what}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done.stdout


def show_dump(ifname: str) -> ObservedWg:
    return parse_dump(_run([WG, "show", ifname, "dump"], f"wg show {ifname} dump"))


def peer_args(op: SetPeer | RemovePeer) -> list[str]:
    if isinstance(op, RemovePeer):
        return ["peer", op.public_key, "remove"]
    spec = op.spec
    nets = sorted(spec.allowed_ips, key=lambda n: (n.version, int(n.network_address), n.prefixlen))
    args = ["peer", spec.public_key, "allowed-ips", ",".join(str(n) for n in nets)]
    if spec.endpoint is not None:
        args += ["endpoint", spec.endpoint]
    args += ["persistent-keepalive", str(spec.keepalive) if spec.keepalive else "off"]
    return args


def set_argv(ifname: str, ops: Sequence[WgOp], key_file: Path | None) -> list[list[str]]:
    """The `wg set` command lines for `ops` (pure, so tests can check no secret is in them)."""
    head: list[str] = []
    for op in ops:
        if isinstance(op, SetPrivateKey):
            if key_file is None:
                raise MeshError("cannot set the private key: no key file")
            head += ["private-key", str(key_file)]
        elif isinstance(op, SetListenPort):
            head += ["listen-port", str(op.port)]
    peers = [op for op in ops if isinstance(op, SetPeer | RemovePeer)]
    calls: list[list[str]] = []
    for start in range(0, max(len(peers), 1), BATCH):
        chunk = peers[start:start + BATCH]
        args = [*(head if start == 0 else []), *(a for op in chunk for a in peer_args(op))]
        if args:
            calls.append([WG, "set", ifname, *args])
    return calls


def apply(ifname: str, ops: Sequence[WgOp], key_file: Path | None = None) -> None:
    for argv in set_argv(ifname, ops, key_file):
        _run(argv, f"wg set {ifname}")


def _die_with_parent() -> None:
    """Child side of fork: get SIGTERM when the agent dies, so no orphan keeps the interface (prctl(2))."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def start_wireguard_go(ifname: str, log: Path | None = None, timeout: float = 10.0) -> subprocess.Popen[bytes]:
    """Run `wireguard-go IFNAME` as our child and wait for its control socket (wireguard-go README)."""
    sock = SOCKET_DIR / f"{ifname}.sock"
    env = {**os.environ, "WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"}
    out = open_append(log) if log is not None else subprocess.DEVNULL  # handed to the child; 0600
    try:
        proc = subprocess.Popen(["wireguard-go", ifname], env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    except OSError as exc:
        raise MeshError(f"cannot start wireguard-go: {exc}") from None
    finally:
        if log is not None and not isinstance(out, int):
            out.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MeshError(f"wireguard-go {ifname} exited with {proc.returncode} before its socket appeared")
        if sock.exists():
            try:
                show_dump(ifname)
                return proc
            except MeshError:
                pass
        time.sleep(0.02)
    stop(proc)
    raise MeshError(f"wireguard-go {ifname}: no control socket {sock} after {timeout:.0f}s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
