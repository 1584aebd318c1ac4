"""sixpn's ground floor: the state of orgs, networks, apps, hosts, machines and peers; 6PN addressing;
the fly.toml-shaped app config. It imports none of sixpn's other packages."""

from catalog.appconfig import AppConfig
from catalog.errors import CatalogError, ConfigError, Conflict, InvalidWrite, NotFound
from catalog.follow import Follower, follow
from catalog.models import App, Change, Host, Machine, Network, Org, Peer
from catalog.regions import Region, RegionTable, default_regions
from catalog.state import State
from catalog.store import Catalog, default_state_dir

__all__ = [
    "App", "AppConfig", "Catalog", "CatalogError", "Change", "ConfigError", "Conflict", "Follower", "Host",
    "InvalidWrite", "Machine", "Network", "NotFound", "Org", "Peer", "Region", "RegionTable", "State",
    "default_regions", "default_state_dir", "follow",
]
