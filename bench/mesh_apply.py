"""Mesh apply costs.

1. A one-peer change on a wireguard-go interface that already has 1,000 peers: wgmesh's path (read
   `wg show dump`, plan, one `wg set`) against `wg syncconf` of the same change (render the whole config,
   let wg diff it). Runs in a namespace of its own (`wgt-bench-<pid>`), removed at the end.
2. Convergence of the whole 3-region lab: from `sixpn lab up` until every host's `wg show` lists every
   other host as a peer (lab id `bm`, torn down at the end).

Needs root. The last line is key=value pairs.
"""

from __future__ import annotations

import ipaddress
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from catalog import Catalog
from wgmesh import keys, wgctl
from wgmesh.desired import Desired, PeerSpec
from wgmesh.plan import SetListenPort, SetPeer, SetPrivateKey, plan_wg

PEERS = 1000
ROUNDS = 15
IFNAME = f"wgtb{os.getpid() % 100000}"
LAB_ID = "bm"
ROOT = Path(__file__).resolve().parent.parent


def peer_spec(i: int, key: str, extra: bool = False) -> PeerSpec:
    nets = {ipaddress.IPv6Network(f"fdaa:0:0:{i:x}::1/128"), ipaddress.IPv6Network(f"fdaa:0:1:0:{i:x}::/80")}
    if extra:
        nets.add(ipaddress.IPv6Network(f"fdaa:0:2:0:{i:x}::/80"))
    return PeerSpec(key, frozenset(nets), f"192.0.2.{i % 250 + 1}:51820", 0, f"h{i}")


def desired(me: keys.KeyPair, peer_keys: list[str], flip: bool) -> Desired:
    peers = {k: peer_spec(i, k, extra=flip and i == 0) for i, k in enumerate(peer_keys)}
    return Desired("bench", me.public, 51820, peers)


def syncconf_text(me: keys.KeyPair, want: Desired) -> str:
    lines = ["[Interface]", f"PrivateKey = {me.private}", f"ListenPort = {want.listen_port}", ""]
    for spec in want.peers.values():
        lines += ["[Peer]", f"PublicKey = {spec.public_key}",
                  f"AllowedIPs = {', '.join(str(n) for n in sorted(spec.allowed_ips, key=str))}",
                  f"Endpoint = {spec.endpoint}", ""]
    return "\n".join(lines)


def bench_one_peer(tmp: Path) -> tuple[float, float, int]:
    me = keys.generate()
    key_file = tmp / "bench.key"
    keys.write_secret(key_file, me.private)
    peer_keys = [keys.generate().public for _ in range(PEERS)]
    first = desired(me, peer_keys, False)
    wgctl.apply(IFNAME, [SetPrivateKey(me.public), SetListenPort(51820),
                         *(SetPeer(s, True) for s in first.peers.values())], key_file)
    ours: list[float] = []
    theirs: list[float] = []
    ops_count = 0
    conf = tmp / "sync.conf"
    for round_ in range(ROUNDS * 2):
        want = desired(me, peer_keys, flip=round_ % 2 == 0)
        start = time.perf_counter()
        ops = plan_wg(want, wgctl.show_dump(IFNAME))
        wgctl.apply(IFNAME, ops, key_file)
        ours.append(time.perf_counter() - start)
        ops_count = max(ops_count, len(ops))
        want = desired(me, peer_keys, flip=round_ % 2 == 1)
        start = time.perf_counter()
        keys.write_secret(conf, syncconf_text(me, want))
        subprocess.run(["wg", "syncconf", IFNAME, str(conf)], check=True)
        theirs.append(time.perf_counter() - start)
    assert len(wgctl.show_dump(IFNAME).peers) == PEERS
    return statistics.median(ours) * 1000, statistics.median(theirs) * 1000, ops_count


def lab_converge() -> tuple[float, float]:
    """Seconds from `lab up` starting until it returned, and until every host's interface has all other hosts
    as peers."""
    sys.path.insert(0, str(ROOT))
    from netns_lab.lab import Lab

    start = time.perf_counter()
    lab = Lab.up(ROOT / "examples" / "three-regions.toml", LAB_ID)
    up = time.perf_counter() - start
    try:
        hosts = [n for n in lab.plan.hosts()]
        deadline = time.monotonic() + 60
        while True:
            with Catalog(lab.state_dir) as cat:
                keyset = {h.name: cat.host(h.name).public_key for h in hosts}
            done = all(keyset.values())
            for node in hosts if done else ():
                out = lab.exec(node.name, ["wg", "show", lab.plan.wg_ifname(node), "peers"]).stdout.split()
                done = done and set(out) >= set(keyset.values()) - {keyset[node.name]}
            if done:
                return up, time.perf_counter() - start
            if time.monotonic() > deadline:
                raise SystemExit("the lab mesh did not converge within 60 s")
            time.sleep(0.02)
    finally:
        Lab.down(LAB_ID)


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("mesh_apply needs root (network namespaces, wireguard-go)")
    ns = f"wgt-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--inside"], check=True)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    up, converge = lab_converge()
    print(f"3-region lab: `lab up` returned after {up:.2f} s, mesh converged {converge:.2f} s after it started")
    result = Path(tempfile.gettempdir()) / f"wgt-bench-{os.getpid()}.txt"
    line = result.read_text().strip() if result.exists() else ""
    result.unlink(missing_ok=True)
    print(f"{line} lab_up_s={up:.2f} lab_converge_s={converge:.2f}")


def inside() -> None:
    proc = wgctl.start_wireguard_go(IFNAME)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ours, theirs, ops = bench_one_peer(Path(tmp))
    finally:
        wgctl.stop(proc)
    print(f"one-peer change on {PEERS} peers: wgmesh (dump+plan+wg set) median {ours:.1f} ms ({ops} op), "
          f"wg syncconf median {theirs:.1f} ms")
    out = Path(tempfile.gettempdir()) / f"wgt-bench-{os.getppid()}.txt"
    out.write_text(f"peers={PEERS} wgmesh_apply_ms={ours:.1f} syncconf_ms={theirs:.1f}")


if __name__ == "__main__":
    inside() if "--inside" in sys.argv else main()
