"""UDP on the event loop with batched syscalls: recvmmsg(2)/sendmmsg(2) through ctypes (Linux).

A DatagramProtocol costs one loop callback, one recvfrom and one sendto per packet; under load that, not
the DNS work, bounds throughput. Here a readiness callback (`loop.add_reader`) drains up to BATCH datagrams
per syscall and sends all replies with one more, so the per-packet cost is a few ctypes field accesses.
Replies reuse the sockaddr the kernel filled in on receive.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import socket
from collections.abc import Callable

log = logging.getLogger("dns6pn")

BATCH = 64
RX_SIZE = 4096  # bigger queries are not DNS queries worth answering; MSG_TRUNC marks them and they are dropped
MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20
ROUNDS = 8  # batches per readiness callback before yielding to the loop


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)), ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t), ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        libc.recvmmsg.argtypes = [ctypes.c_int, ctypes.POINTER(_Mmsghdr), ctypes.c_uint, ctypes.c_int,
                                  ctypes.c_void_p]
        libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.POINTER(_Mmsghdr), ctypes.c_uint, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc


LIBC = _libc()
AVAILABLE = LIBC is not None


def _address(raw: bytes) -> tuple[bytes, tuple[str, int]]:
    """(packed address, (text, port)) of a sockaddr_in / sockaddr_in6."""
    if int.from_bytes(raw[:2], "little") == socket.AF_INET6:
        packed = raw[8:24]
        return packed, (socket.inet_ntop(socket.AF_INET6, packed), int.from_bytes(raw[2:4], "big"))
    packed = raw[4:8]
    return packed, (socket.inet_ntop(socket.AF_INET, packed), int.from_bytes(raw[2:4], "big"))


class BatchedUdp:
    """Serve one bound, non-blocking UDP socket. `handle(data, source_key)` returns bytes, None, or
    anything else for "answer later" (then `defer(result, send)` is called with a send function)."""

    def __init__(
        self, sock: socket.socket, handle: Callable[[bytes, bytes], object],
        defer: Callable[[object, Callable[[bytes], None]], None], tx_size: int,
    ) -> None:
        assert LIBC is not None
        self.libc = LIBC
        self.sock = sock
        self.fd = sock.fileno()
        self.handle = handle
        self.defer = defer
        self.tx_size = tx_size
        self.rx = (_Mmsghdr * BATCH)()
        self.tx = (_Mmsghdr * BATCH)()
        self.rx_iov = (_Iovec * BATCH)()
        self.tx_iov = (_Iovec * BATCH)()
        self.rx_buf = ctypes.create_string_buffer(RX_SIZE * BATCH)
        self.tx_buf = ctypes.create_string_buffer(tx_size * BATCH)
        self.names = ctypes.create_string_buffer(128 * BATCH)
        base_rx, base_tx, base_names = (ctypes.addressof(b) for b in (self.rx_buf, self.tx_buf, self.names))
        for i in range(BATCH):
            self.rx_iov[i].iov_base, self.rx_iov[i].iov_len = base_rx + i * RX_SIZE, RX_SIZE
            self.tx_iov[i].iov_base = base_tx + i * tx_size
            rx = self.rx[i].msg_hdr
            rx.msg_name, rx.msg_iov, rx.msg_iovlen = base_names + i * 128, ctypes.pointer(self.rx_iov[i]), 1
            self.tx[i].msg_hdr.msg_iov, self.tx[i].msg_hdr.msg_iovlen = ctypes.pointer(self.tx_iov[i]), 1
        # Flat views of the same memory: reading a field through a memoryview index costs a fraction of a
        # ctypes attribute access (which builds a Python object per nested struct).
        self.rx_u32 = memoryview(self.rx).cast("B").cast("I")  # mmsghdr: 64 bytes = 16 u32
        self.tx_u32 = memoryview(self.tx).cast("B").cast("I")
        self.tx_u64 = memoryview(self.tx).cast("B").cast("Q")  # msg_name pointer at u64 index 8*i
        self.txiov_u64 = memoryview(self.tx_iov).cast("B").cast("Q")  # iovec: base, len
        self.rx_mem = memoryview(self.rx_buf).cast("B")
        self.tx_mem = memoryview(self.tx_buf).cast("B")
        self.name_mem = memoryview(self.names).cast("B")
        self.name_ptr = [base_names + i * 128 for i in range(BATCH)]
        self.closed = False

    def on_readable(self) -> None:
        for _ in range(ROUNDS):
            if self.closed or self._round() < BATCH:
                return

    def _round(self) -> int:
        rx_u32 = self.rx_u32
        for i in range(BATCH):
            rx_u32[i * 16 + 2] = 128  # msg_namelen, reset: the kernel overwrites it
        count: int = self.libc.recvmmsg(self.fd, self.rx, BATCH, MSG_DONTWAIT, None)
        if count <= 0:
            err = ctypes.get_errno()
            if count < 0 and err not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                log.debug("recvmmsg: %s", errno.errorcode.get(err, err))
            return 0
        handle, tx_size = self.handle, self.tx_size
        rx_mem, tx_mem, name_mem = self.rx_mem, self.tx_mem, self.name_mem
        tx_u32, tx_u64, txiov_u64, name_ptr = self.tx_u32, self.tx_u64, self.txiov_u64, self.name_ptr
        out = 0
        for i in range(count):
            base = i * 16
            if rx_u32[base + 12] & MSG_TRUNC:  # msg_hdr.msg_flags
                continue
            namelen = rx_u32[base + 2]
            # sockaddr_in6: family 2, port 2, flowinfo 4, address 16; sockaddr_in: family, port, address 4
            offset = i * 128
            # (.tobytes() on a slice is about twice as fast as bytes() of it)
            where = name_mem[offset + 8 : offset + 24] if namelen >= 24 else name_mem[offset + 4 : offset + 8]
            packed = where.tobytes()
            start = i * RX_SIZE
            reply = handle(rx_mem[start : start + rx_u32[base + 14]].tobytes(), packed)  # msg_len
            if reply is None:
                continue
            if reply.__class__ is not bytes:
                self._later(reply, name_mem[offset : offset + namelen].tobytes())
                continue
            assert isinstance(reply, bytes)
            size = len(reply)
            if size > tx_size:
                self._send_one(reply, name_mem[offset : offset + namelen].tobytes())
                continue
            at = out * tx_size
            tx_mem[at : at + size] = reply
            txiov_u64[out * 2 + 1] = size
            tx_u64[out * 8] = name_ptr[i]  # reply to the sockaddr the query came from
            tx_u32[out * 16 + 2] = namelen
            out += 1
        if out:
            sent = self.libc.sendmmsg(self.fd, self.tx, out, MSG_DONTWAIT)
            if sent < out:
                log.debug("sendmmsg sent %d of %d", sent, out)  # full socket buffer: UDP may drop
        return int(count)

    def _later(self, request: object, name: bytes) -> None:
        self.defer(request, lambda data: self._send_one(data, name))

    def _send_one(self, data: bytes, name: bytes) -> None:
        if self.closed:
            return
        try:
            self.sock.sendto(data, _address(name)[1])
        except OSError as exc:
            log.debug("sendto: %s", exc)

    def close(self) -> None:
        self.closed = True
