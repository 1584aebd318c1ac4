"""The delay line process: `python -m netns_lab.delayline CONFIG READY_FILE`, run in the backbone namespace.

It attaches to the persistent TUN devices `dly-<region>`, reads every packet the backbone routes into them,
holds it for its one-way delay (delaycore) and writes it back on the same TUN, where the backbone's policy
rules deliver it.

Why a hand-written select(2) loop and not asyncio/uvloop: libuv timers and epoll_wait(2) have millisecond
resolution, which adds up to 1 ms per direction; select(2) takes a microsecond timeout (hrtimer-backed) and,
with the timer slack set to 1 us via prctl(2) and SCHED_FIFO, wakes within tens of microseconds of a packet's departure.
The loop is still event-driven: it sleeps until the next departure or the next packet. SIGHUP reloads the
config (anycast moved); SIGTERM stops it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import select
import signal
import struct
import sys
import time
from pathlib import Path

from netns_lab.delaycore import DelayConfig, DelayTable, Queues

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
PR_SET_TIMERSLACK = 29
READ_BURST = 256  # packets read from one TUN before serving departures again
EARLY = 20e-6  # send a packet this early rather than sleep again for less


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def load(path: Path) -> DelayTable:
    return DelayTable(DelayConfig.from_json(json.loads(path.read_text())))


def realtime() -> None:
    """Timer slack 1 us and SCHED_FIFO: the delay line's timing must hold while the lab's other processes
    (two dozen Python services on two cores) load the CPUs. The loop always sleeps in select(2), and the
    kernel's RT throttling (sched_rt_runtime_us) keeps a runaway from starving the machine."""
    ctypes.CDLL(None).prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))


def run(config_path: Path, ready_path: Path) -> None:
    realtime()
    table = load(config_path)
    fds = {region: open_tun(tun) for region, tun in table.config.tuns.items()}
    region_of_fd = {fd: region for region, fd in fds.items()}
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    reload_flag = [False]
    signal.signal(signal.SIGHUP, lambda *_: reload_flag.__setitem__(0, True))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ready_path.write_text(str(os.getpid()))
    queues = Queues()
    readable = [*fds.values(), wake_r]
    while True:
        departure = queues.next_departure()
        timeout = None if departure is None else max(0.0, departure - time.monotonic())
        ready, _, _ = select.select(readable, [], [], timeout)
        now = time.monotonic()
        for fd in ready:
            if fd == wake_r:
                os.read(wake_r, 512)
                if reload_flag[0]:
                    reload_flag[0] = False
                    table = load(config_path)
                continue
            ingress = region_of_fd[fd]
            for _ in range(READ_BURST):
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                queues.push(ingress, table.delay(ingress, packet), now, packet)
        for region, packet in queues.due(time.monotonic() + EARLY):
            try:  # noqa: SIM105 - cheaper than contextlib.suppress on the hot path
                os.write(fds[region], packet)
            except OSError:
                pass  # the kernel refused it (no route, device gone): a lost packet, as on a real link


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m netns_lab.delayline CONFIG READY_FILE", file=sys.stderr)
        return 2
    run(Path(argv[0]), Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
