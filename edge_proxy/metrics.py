"""Prometheus metrics in the text exposition format (version 0.0.4), without a client library.

Workers keep their own `Metrics`; with `--workers N` each dumps a snapshot (`snapshot()`) that the
supervisor merges (`merge`) so one scrape sees the whole edge.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Any

Labels = tuple[tuple[str, str], ...]
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HELP = {
    "sixpn_edge_requests_total": ("counter", "Requests answered, by app, edge region and status."),
    "sixpn_edge_proxy_errors_total": ("counter", "Proxy-originated errors by code."),
    "sixpn_edge_retries_total": ("counter", "Requests retried on another candidate, by app."),
    "sixpn_edge_replays_total": ("counter", "fly-replay hops performed, by app."),
    "sixpn_edge_upstream_connect_seconds": ("histogram", "Upstream TCP connect time."),
    "sixpn_edge_request_seconds": ("histogram", "Request duration at the edge, by app."),
    "sixpn_edge_machine_load": ("gauge", "Load counted by the proxy per machine (requests or connections)."),
    "sixpn_edge_machine_healthy": ("gauge", "1 when the machine is routable from this edge."),
    "sixpn_edge_host_rtt_ms": ("gauge", "RTT from this edge to a worker host (windowed-min TCP connect times)."),
    "sixpn_edge_host_rtt_samples": ("gauge", "Connect-time samples behind sixpn_edge_host_rtt_ms (0 = matrix seed)."),
    "sixpn_edge_open_connections": ("gauge", "Client connections open on this edge."),
}


#: Gauges that workers each measure for the whole edge: merged by max, not summed.
NOT_ADDITIVE = frozenset({"sixpn_edge_host_rtt_ms", "sixpn_edge_host_rtt_samples", "sixpn_edge_machine_healthy"})


def _labels(labels: dict[str, str]) -> Labels:
    # Call sites pass labels in a fixed order, so no sort on the hot path; render() sorts and merges.
    return tuple(labels.items())


class Metrics:
    def __init__(self) -> None:
        self.counters: dict[str, dict[Labels, float]] = {}
        self.gauges: dict[str, dict[Labels, float]] = {}
        self.hists: dict[str, dict[Labels, list[float]]] = {}  # bucket counts..., +Inf count, sum

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        book = self.counters.setdefault(name, {})
        key = _labels(labels)
        book[key] = book.get(key, 0.0) + value

    def inc_key(self, name: str, key: Labels) -> None:
        """`inc(name, **labels)` with the labels tuple built once by the caller (hot path)."""
        book = self.counters.get(name)
        if book is None:
            book = self.counters[name] = {}
        book[key] = book.get(key, 0.0) + 1.0

    def observe_key(self, name: str, value: float, key: Labels) -> None:
        """`observe(name, value, **labels)` with a prebuilt labels tuple."""
        book = self.hists.get(name)
        row = book.get(key) if book is not None else None
        if row is None:
            self.observe(name, value, **dict(key))
            return
        row[bisect.bisect_left(BUCKETS, value)] += 1
        row[-1] += value

    def set(self, name: str, value: float, **labels: str) -> None:
        self.gauges.setdefault(name, {})[_labels(labels)] = value

    def clear_gauge(self, name: str) -> None:
        self.gauges.pop(name, None)

    def observe(self, name: str, value: float, **labels: str) -> None:
        book = self.hists.setdefault(name, {})
        key = _labels(labels)
        row = book.get(key)
        if row is None:
            row = book[key] = [0.0] * (len(BUCKETS) + 2)
        row[bisect.bisect_left(BUCKETS, value)] += 1
        row[-1] += value

    def snapshot(self) -> dict[str, Any]:
        def dump(book: dict[str, dict[Labels, Any]]) -> dict[str, list[Any]]:
            return {name: [[list(map(list, k)), v] for k, v in rows.items()] for name, rows in book.items()}

        return {"counters": dump(self.counters), "gauges": dump(self.gauges), "hists": dump(self.hists)}

    def merge(self, snap: dict[str, Any]) -> None:
        for name, rows in snap.get("counters", {}).items():
            for key, value in rows:
                labels = tuple(sorted((k, v) for k, v in key))
                book = self.counters.setdefault(name, {})
                book[labels] = book.get(labels, 0.0) + value
        for name, rows in snap.get("gauges", {}).items():
            for key, value in rows:
                labels = tuple(sorted((k, v) for k, v in key))
                book = self.gauges.setdefault(name, {})
                if name in NOT_ADDITIVE:  # every worker measures the same thing: keep one figure
                    book[labels] = max(book.get(labels, value), value)
                else:
                    book[labels] = book.get(labels, 0.0) + value
        for name, rows in snap.get("hists", {}).items():
            for key, value in rows:
                labels = tuple(sorted((k, v) for k, v in key))
                hist = self.hists.setdefault(name, {})
                old = hist.get(labels)
                hist[labels] = list(value) if old is None else [a + b for a, b in zip(old, value, strict=True)]

    def render(self) -> str:
        normal = Metrics()
        normal.merge(self.snapshot())
        return normal._render()

    def _render(self) -> str:
        out: list[str] = []
        for name in sorted({*self.counters, *self.gauges, *self.hists}):
            kind, text = HELP.get(name, ("untyped", name))
            out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            for labels, value in sorted(self.counters.get(name, {}).items()):
                out.append(f"{name}{_fmt(labels)} {value:g}")
            for labels, value in sorted(self.gauges.get(name, {}).items()):
                out.append(f"{name}{_fmt(labels)} {value:g}")
            for labels, row in sorted(self.hists.get(name, {}).items()):
                running = 0.0
                for bound, count in zip((*BUCKETS, float("inf")), row[:-1], strict=True):
                    running += count
                    le = "+Inf" if bound == float("inf") else f"{bound:g}"
                    out.append(f"{name}_bucket{_fmt((*labels, ('le', le)))} {running:g}")
                out.append(f"{name}_sum{_fmt(labels)} {row[-1]:g}")
                out.append(f"{name}_count{_fmt(labels)} {running:g}")
        return "\n".join(out) + "\n"


def _fmt(labels: Iterable[tuple[str, str]]) -> str:
    items = [f'{k}="{_escape(v)}"' for k, v in labels]
    return "{" + ",".join(items) + "}" if items else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
