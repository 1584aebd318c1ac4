"""The C extension is what the edge runs wherever it can be built: a silent fallback to the Python reference
(setup.py marks the extension optional) would make the lane several times slower without failing anything."""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path

import pytest

from edge_proxy.http1 import simple


def test_c_recognizers_are_built_where_a_compiler_is() -> None:
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if shutil.which("cc") is None or not headers.exists():
        pytest.skip("no C compiler or Python headers: the pure-Python reference is used")
    if os.environ.get("SIXPN_NO_C"):
        pytest.skip("SIXPN_NO_C set: the pure-Python reference is used on purpose")
    assert simple.ACCELERATED, "edge_proxy/http1/_simple.c did not build: run `make setup` and read pip's output"
    assert simple.scan_request is not simple.scan_request_py
