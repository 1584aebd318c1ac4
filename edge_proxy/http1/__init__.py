"""Reusable HTTP/1.1 proxy machinery on asyncio Protocols + httptools (llhttp).

- `head`: `RequestHead`/`ResponseHead`, framing rules (RFC 9112 §6.3: CL+TE, duplicate CL, TE in 1.0 → 400),
  Host validation, hop-by-hop stripping (RFC 9110 §7.6.1), serialization, chunk encoding. Pure.
- `body.Body`: a request body stream with back-pressure (`attach` for callbacks, `await read()` to pull).
- `server.ServerConnection` / `exchange.Exchange`: the client-facing Protocol. `ServerConnection(handler, limits)`
  calls `await handler(exchange)` per request, in order; the handler answers with `ex.respond(...)`,
  `ex.start/write/end`, or hands the exchange to `forward`. Malformed requests are answered 400/431/408 with a
  `fly-proxy-error` code and never reach the handler.
- `client.UpstreamConnection` / `client.UpstreamPool`: bounded keep-alive pool per (host, port).
- `sweeper`: head/idle/body timeouts of all connections checked by one timer per loop.
- `forward.forward(ex, pool, key, headers, tee, on_head=..., timeouts=...)`: streams one request and its
  response (chunked/length/close framing, 100-continue, Upgrade tunnels, back-pressure both ways).
  `forward.BodyTee` keeps the body (≤ limit) for retries and fly-replay.

Example, a minimal reverse proxy:

    pool = UpstreamPool()
    async def handler(ex: Exchange) -> None:
        headers = strip_hop_by_hop(ex.head.headers)
        await forward(ex, pool, ("127.0.0.1", 8081), headers, BodyTee(ex, 1 << 20))
    await loop.create_server(lambda: ServerConnection(handler, ServerLimits()), "127.0.0.1", 8080)
"""

from edge_proxy.http1.body import Body, BodyError
from edge_proxy.http1.client import UpstreamConnection, UpstreamPool
from edge_proxy.http1.forward import BodyTee, ForwardResult, Timeouts, forward
from edge_proxy.http1.head import (
    IDEMPOTENT,
    Headers,
    RequestHead,
    ResponseHead,
    connection_tokens,
    get,
    get_all,
    host_name,
    strip_hop_by_hop,
)
from edge_proxy.http1.server import Exchange, ServerConnection, ServerLimits, error_response

__all__ = [
    "IDEMPOTENT", "Body", "BodyError", "BodyTee", "Exchange", "ForwardResult", "Headers", "RequestHead",
    "ResponseHead", "ServerConnection", "ServerLimits", "Timeouts", "UpstreamConnection", "UpstreamPool",
    "connection_tokens", "error_response", "forward", "get", "get_all", "host_name", "strip_hop_by_hop",
]
