"""wgmesh: the WireGuard host mesh, org isolation (nftables) and laptop peers (docs/mesh.md).

Pure cores (`desired`, `plan`, `dump`, `nftrules`, `peerconf`, `keys`) hold no I/O; `wgctl`, `netlink`,
`agent` and `peers` are the thin adapters that talk to `wg`, the kernel and the catalog.
"""

from wgmesh.errors import MeshError

__all__ = ["MeshError"]
