"""Regions and their round-trip times, seeded from the packaged copy of shared/data/regions.toml."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from catalog.errors import NotFound

SAME_REGION_RTT_MS = 1.0


@dataclass(frozen=True)
class Region:
    code: str
    name: str
    lat: float
    lon: float


@dataclass(frozen=True)
class RegionTable:
    regions: dict[str, Region]
    rtt_ms: dict[frozenset[str], float]

    def get(self, code: str) -> Region:
        try:
            return self.regions[code]
        except KeyError:
            raise NotFound(f"unknown region {code!r} (known: {', '.join(sorted(self.regions))})") from None

    def rtt(self, a: str, b: str) -> float:
        """Round-trip time in ms between two regions (1 ms inside one region)."""
        if a == b:
            return SAME_REGION_RTT_MS
        try:
            return self.rtt_ms[frozenset((a, b))]
        except KeyError:
            raise NotFound(f"no RTT known between {a!r} and {b!r}") from None

    def nearest(self, origin: str, candidates: list[str]) -> list[str]:
        """Candidates sorted by RTT from origin, nearest first (ties by code, so stable)."""
        return sorted(candidates, key=lambda code: (self.rtt(origin, code), code))


def parse_regions(text: str) -> RegionTable:
    doc = tomllib.loads(text)
    regions = {
        code: Region(code=code, name=str(r["name"]), lat=float(r["lat"]), lon=float(r["lon"]))
        for code, r in doc["regions"].items()
    }
    rtt: dict[frozenset[str], float] = {}
    for pair, ms in doc["rtt_ms"].items():
        a, b = pair.split("-")
        rtt[frozenset((a, b))] = float(ms)
    return RegionTable(regions=regions, rtt_ms=rtt)


@cache
def default_regions() -> RegionTable:
    text = resources.files("catalog").joinpath("data/regions.toml").read_text()
    return parse_regions(text)
