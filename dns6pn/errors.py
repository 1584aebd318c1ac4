"""dns6pn's one base exception: what the CLI turns into a one-line error."""

from __future__ import annotations


class DnsError(Exception):
    """A configuration or startup problem of the DNS server (bad address, unknown host, bind failure)."""
