"""The lab's one base exception; its message is fit for a user (the CLI prints it on one line)."""

from __future__ import annotations


class LabError(Exception):
    """Base of every error netns_lab raises."""


class TopologyError(LabError):
    """A topology file is malformed; the message names the key's path."""


class LabStateError(LabError):
    """The lab is not in the state a verb needs (not up, unknown node, no such machine...)."""
