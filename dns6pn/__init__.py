"""dns6pn: the `.internal` DNS server of sixpn's 6PN networks (specs/internal-dns.md).

`engine.Engine` is the pure core (packet + source + catalog state → reply); `zone` maps names to records;
`server` holds the asyncio UDP/TCP adapters and the catalog follower; `sixpn dns serve` runs it.
"""

from dns6pn.config import ServerConfig, parse_address
from dns6pn.engine import Engine, Forward
from dns6pn.errors import DnsError
from dns6pn.server import DnsServer, serve_forever

__all__ = ["DnsError", "DnsServer", "Engine", "Forward", "ServerConfig", "parse_address", "serve_forever"]
