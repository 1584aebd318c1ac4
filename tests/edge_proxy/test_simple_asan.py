"""The C recognizers under AddressSanitizer and UndefinedBehaviorSanitizer: _simple.c parses bytes from the
network, so it is built once more with both sanitizers and fed mutated messages, its answers compared with the
pure-Python reference. Any out-of-bounds read, overflow or undefined operation aborts the child process (checked
by hand: dropping one length check from _simple.c makes this test fail with a heap-buffer-overflow)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "edge_proxy" / "http1" / "_simple.c"

FUZZ = r'''
import importlib.util, random, sys
sys.path.insert(0, sys.argv[1])
spec = importlib.util.spec_from_file_location("_simple", sys.argv[2])
c = importlib.util.module_from_spec(spec); spec.loader.exec_module(c)
from edge_proxy.http1.simple import rewrite_response_py, scan_request_py
rng = random.Random(20261126)
REQUESTS = [b"GET / HTTP/1.1\r\nHost: web.sixpn.test\r\n\r\n",
            b"GET /x?y HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: Keep-Alive\r\nUser-Agent: x\r\n"
            b"keep-alive: 5\r\nAccept: */*\r\n\r\n",
            b"HEAD /a HTTP/1.1\r\nhost:\ta.b \r\nX: \r\n\r\n"]
RESPONSES = [b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: x\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello",
             b"HTTP/1.1 404 \r\ncontent-length:0\r\nfly-request-id: a\r\nkeep-alive: t=5\r\n\r\n",
             b"HTTP/1.1 500 Internal\r\nX: y\r\nContent-Length:  3 \r\n\r\nabc"]
ALPHABET = b"\r\n :\t\x00\x7f\x80\xffAaHh09-/[]GETHEADcontent-lengthconnectionkeep-alive"
def mutate(data):
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op, i = rng.random(), rng.randint(0, len(b))
        if op < 0.3 and b: b[min(i, len(b) - 1)] = rng.choice(ALPHABET)
        elif op < 0.6: b[i:i] = bytes([rng.choice(ALPHABET)])
        elif op < 0.8 and b: del b[min(i, len(b) - 1)]
        else: b = b[:i]
    return bytes(b)
accepted = [0, 0]
for k in range(int(sys.argv[3])):
    if k % 2:
        data, limit = mutate(rng.choice(REQUESTS)), rng.choice([1, 2, 3, 100])
        got, want = c.scan_request(data, limit), scan_request_py(data, limit)
        accepted[0] += got is not None
    else:
        data, tail = mutate(rng.choice(RESPONSES)), rng.choice([b"", b"server: s\r\n"])
        got, want = c.rewrite_response(data, tail), rewrite_response_py(data, tail)
        accepted[1] += got is not None
    assert got == want, (data, got, want)
print("accepted", *accepted)
'''


def _libasan() -> str | None:
    out = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return out if out and os.path.isabs(out) and os.path.exists(out) else None


def test_c_recognizers_under_asan_and_ubsan(tmp_path: Path) -> None:
    include = sysconfig.get_paths()["include"]
    libasan = _libasan() if shutil.which("gcc") else None
    if libasan is None or not (Path(include) / "Python.h").exists():
        pytest.skip("needs gcc with libasan and the Python headers")
    module = tmp_path / "_simple.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-g", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", f"-I{include}", str(SOURCE),
                    "-o", str(module)], check=True, capture_output=True)
    # PYTHONMALLOC=malloc: bytes objects from malloc, with ASan redzones (pymalloc arenas have none).
    env = {**os.environ, "LD_PRELOAD": libasan, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
           "PYTHONMALLOC": "malloc", "SIXPN_NO_C": "1"}
    run = subprocess.run([sys.executable, "-c", FUZZ, str(ROOT), str(module), "150000"], env=env,
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "AddressSanitizer" not in run.stderr and "runtime error" not in run.stderr
    requests, responses = (int(n) for n in run.stdout.split()[1:3])
    assert requests > 500 and responses > 500  # the mutations left enough accepted messages to compare
