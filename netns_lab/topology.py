"""The lab's topology: a small TOML file read into frozen dataclasses, unknown keys refused.

```toml
scale = 1.0                 # multiplies every RTT of regions.toml (tests may shrink them)
[regions.gru]
edges = 1                   # edge-gru, edge-gru-2, ...
workers = 1                 # worker-gru, worker-gru-2, ...
gateway = true              # gw-gru
client = true               # client-gru (default true)
[orgs.acme]                 # created in the lab's catalog on `up`
[laptops.alice]
region = "gru"              # where the laptop-alice namespace sits on the underlay
```
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalog.regions import RegionTable, default_regions
from netns_lab.errors import TopologyError

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
#: Every region gets a /27 of the underlay (see plan.py), so at most 8 regions and 29 nodes per region.
MAX_REGIONS = 8
MAX_NODES_PER_REGION = 29


@dataclass(frozen=True)
class RegionSpec:
    code: str
    edges: int = 1
    workers: int = 1
    gateway: bool = False
    client: bool = True


@dataclass(frozen=True)
class LaptopSpec:
    name: str
    region: str


@dataclass(frozen=True)
class Topology:
    regions: tuple[RegionSpec, ...]
    orgs: tuple[str, ...] = ()
    laptops: tuple[LaptopSpec, ...] = ()
    scale: float = 1.0

    def region_codes(self) -> list[str]:
        return [r.code for r in self.regions]


class _Table:
    """A TOML table being read: every key taken is ticked off, leftovers are errors."""

    def __init__(self, raw: object, path: str) -> None:
        if not isinstance(raw, dict):
            raise TopologyError(f"{path or 'topology'}: expected a table")
        self.raw: dict[str, Any] = raw
        self.path = path
        self.taken: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def int_(self, name: str, default: int, low: int, high: int) -> int:
        self.taken.add(name)
        value = self.raw.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise TopologyError(f"{self.key(name)}: expected an integer in {low}..{high}, got {value!r}")
        return value

    def bool_(self, name: str, default: bool) -> bool:
        self.taken.add(name)
        value = self.raw.get(name, default)
        if not isinstance(value, bool):
            raise TopologyError(f"{self.key(name)}: expected true or false, got {value!r}")
        return value

    def float_(self, name: str, default: float) -> float:
        self.taken.add(name)
        value = self.raw.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 10:
            raise TopologyError(f"{self.key(name)}: expected a number in (0, 10], got {value!r}")
        return float(value)

    def str_(self, name: str) -> str:
        self.taken.add(name)
        value = self.raw.get(name)
        if not isinstance(value, str):
            raise TopologyError(f"{self.key(name)}: required string, got {value!r}")
        return value

    def tables(self, name: str) -> dict[str, _Table]:
        self.taken.add(name)
        value = self.raw.get(name, {})
        if not isinstance(value, dict):
            raise TopologyError(f"{self.key(name)}: expected a table")
        return {k: _Table(v, f"{self.key(name)}.{k}") for k, v in value.items()}

    def done(self) -> None:
        unknown = sorted(set(self.raw) - self.taken)
        if unknown:
            raise TopologyError(f"{self.key(unknown[0])}: unknown key")


def from_doc(doc: dict[str, Any], regions: RegionTable | None = None) -> Topology:
    table = regions or default_regions()
    top = _Table(doc, "")
    scale = top.float_("scale", 1.0)
    specs: list[RegionSpec] = []
    for code, t in top.tables("regions").items():
        if code not in table.regions:
            raise TopologyError(f"regions.{code}: unknown region (known: {', '.join(sorted(table.regions))})")
        spec = RegionSpec(code, t.int_("edges", 1, 0, 9), t.int_("workers", 1, 0, 9),
                          t.bool_("gateway", False), t.bool_("client", True))
        t.done()
        specs.append(spec)
    if not specs:
        raise TopologyError("regions: a topology needs at least one region")
    if len(specs) > MAX_REGIONS:
        raise TopologyError(f"regions: at most {MAX_REGIONS} regions")
    orgs = []
    for name, t in top.tables("orgs").items():
        _check_name(name, f"orgs.{name}")
        t.done()
        orgs.append(name)
    laptops = []
    codes = {s.code for s in specs}
    for name, t in top.tables("laptops").items():
        _check_name(name, f"laptops.{name}")
        region = t.str_("region")
        if region not in codes:
            raise TopologyError(f"laptops.{name}.region: {region!r} is not a region of this topology")
        t.done()
        laptops.append(LaptopSpec(name, region))
    top.done()
    topo = Topology(tuple(specs), tuple(orgs), tuple(laptops), scale)
    for spec in specs:
        count = spec.edges + spec.workers + int(spec.gateway) + int(spec.client)
        count += sum(1 for lp in laptops if lp.region == spec.code)
        if count > MAX_NODES_PER_REGION:
            raise TopologyError(f"regions.{spec.code}: more than {MAX_NODES_PER_REGION} nodes")
    return topo


def _check_name(name: str, path: str) -> None:
    if not NAME.match(name):
        raise TopologyError(f"{path}: names are lowercase letters, digits and '-' (max 31)")


def loads(text: str, regions: RegionTable | None = None) -> Topology:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"not valid TOML: {exc}") from exc
    return from_doc(doc, regions)


def load(path: str | Path, regions: RegionTable | None = None) -> Topology:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise TopologyError(f"{path}: {exc.strerror}") from exc
    try:
        return loads(text, regions)
    except TopologyError as exc:
        raise TopologyError(f"{path}: {exc}") from exc


#: The default topology (`examples/three-regions.toml` holds the same), used when `lab up` gets no file.
DEFAULT_TOML = """\
scale = 1.0

[regions.gru]
edges = 1
workers = 1
gateway = true

[regions.gig]
edges = 1
workers = 1

[regions.sjc]
edges = 1
workers = 1

[orgs.acme]
[orgs.globex]

[laptops.alice]
region = "gru"
"""


def default() -> Topology:
    return loads(DEFAULT_TOML)
