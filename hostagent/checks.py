"""The app's checks for one machine, run by its host's agent (the edges read the published health instead of
each probing every machine). `[[http_service.checks]]` and `[[services.http_checks]]` are HTTP GETs (2xx/3xx
passes), `[[http_service.tcp_checks]]` / `[[services.tcp_checks]]` a TCP connect, each to the machine's 6PN
address and the service's internal port, from the worker's namespace (where the agent runs)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from catalog.appconfig import AppConfig, HttpCheck
from catalog.models import Health


@dataclass(frozen=True)
class Check:
    port: int
    interval: float
    timeout: float
    grace_period: float
    http: HttpCheck | None = None  # None: a TCP check

    def __repr__(self) -> str:
        what = f"http {self.http.method} {self.http.path}" if self.http else "tcp"
        return f"<Check {what} :{self.port} every {self.interval}s>"


def checks_of(config: AppConfig, group: str) -> tuple[Check, ...]:
    found: list[Check] = []
    for service in config.services:
        if service.processes and group not in service.processes:
            continue
        for h in service.http_checks:
            found.append(Check(service.internal_port, h.interval, h.timeout, h.grace_period, h))
        for t in service.tcp_checks:
            found.append(Check(service.internal_port, t.interval, t.timeout, t.grace_period))
    return tuple(found)


def overall(results: list[bool | None]) -> Health:
    """critical if any check failed its last run; passing once every check passed; "" before that."""
    if any(r is False for r in results):
        return "critical"
    if results and all(r is True for r in results):
        return "passing"
    return ""


async def _tcp(address: str, check: Check) -> bool:
    _, writer = await asyncio.open_connection(address, check.port)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _http(address: str, check: Check) -> bool:
    assert check.http is not None
    reader, writer = await asyncio.open_connection(address, check.port)
    try:
        extra = "".join(f"{k}: {v}\r\n" for k, v in check.http.headers)
        writer.write(f"{check.http.method} {check.http.path} HTTP/1.1\r\nHost: [{address}]:{check.port}\r\n"
                     f"User-Agent: sixpn-host-agent\r\n{extra}Connection: close\r\n\r\n".encode("latin-1"))
        status = await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    parts = status.split()
    return len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1][:1] in (b"2", b"3")


async def run_once(address: str, check: Check) -> bool:
    try:
        return await asyncio.wait_for(_http(address, check) if check.http else _tcp(address, check), check.timeout)
    except (TimeoutError, OSError, ValueError):
        return False
