"""The one base exception of wgmesh; its message is fit for a user and never carries a private key."""

from __future__ import annotations


class MeshError(Exception):
    """Anything wgmesh refuses or fails to do."""
