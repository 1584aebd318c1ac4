"""litefs_proxy's one base exception and its kinds."""

from __future__ import annotations


class LitefsProxyError(Exception):
    """Base of every error litefs_proxy raises; its message is fit for a user (one line)."""


class ConfigError(LitefsProxyError):
    """The config file is malformed; the message names the offending key (`proxy.max-lag: ...`)."""


class MountError(LitefsProxyError):
    """A mount file (`.primary`, `<db>-pos`, `.lag`) holds something that is not in LiteFS's format."""
