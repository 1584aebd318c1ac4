"""The host agent's one base exception."""

from __future__ import annotations


class HostAgentError(Exception):
    """Base of every error the host agent raises; its message is fit for an operator."""
