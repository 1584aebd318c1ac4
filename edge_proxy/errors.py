"""The edge proxy's one base exception, and the errors it answers clients with."""

from __future__ import annotations


class EdgeProxyError(Exception):
    """Base of every error edge_proxy raises; the CLI turns it into one line."""


class HttpError(EdgeProxyError):
    """A request the proxy itself answers with an error status and a short code (`PR01`-style)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code} {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class UpstreamError(EdgeProxyError):
    """Talking to an upstream failed. `sent` says whether any request byte may have reached it."""

    def __init__(self, detail: str, *, sent: bool, connect: bool = False) -> None:
        super().__init__(detail)
        self.sent = sent
        self.connect = connect
        self.stale = False  # a pooled connection closed before any response byte: safe to retry
        self.held = False  # failed mid-response while the response was held back: nothing reached the client
