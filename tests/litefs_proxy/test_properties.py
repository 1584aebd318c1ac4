"""Property tests for the pure core: globs against a reference matcher, TXID and cookie round trips."""

from __future__ import annotations

from functools import cache
from http.cookies import SimpleCookie

from hypothesis import given
from hypothesis import strategies as st

from litefs_proxy.cookie import format_txid, parse_txid, request_txid, set_cookie
from litefs_proxy.globs import compile_glob
from litefs_proxy.mountfiles import Pos, format_lag, format_pos, parse_lag, parse_pos


def reference_match(pattern: str, path: str) -> bool:
    """`*` matches any run of characters (slashes included), everything else itself, whole string."""

    @cache
    def m(i: int, j: int) -> bool:
        if i == len(pattern):
            return j == len(path)
        if pattern[i] == "*":
            return m(i + 1, j) or (j < len(path) and m(i, j + 1))
        return j < len(path) and pattern[i] == path[j] and m(i + 1, j + 1)

    return m(0, 0)


@given(st.text(alphabet="ab/*.?[", max_size=8), st.text(alphabet="ab/.?[", max_size=10))
def test_glob_matches_the_reference(pattern: str, path: str) -> None:
    assert compile_glob(pattern).match(path) is reference_match(pattern, path)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_txid_round_trip(txid: int) -> None:
    text = format_txid(txid)
    assert len(text) == 16 and text == text.lower()
    assert parse_txid(text) == txid


@given(st.integers(min_value=1, max_value=2**64 - 1), st.floats(min_value=0, max_value=4e9))
def test_set_cookie_reads_back(txid: int, now: float) -> None:
    header = set_cookie(txid, now)
    jar: SimpleCookie = SimpleCookie()
    jar.load(header)
    morsel = jar["__txid"]
    assert morsel["path"] == "/" and morsel["httponly"] and morsel["expires"].endswith(" GMT")
    assert request_txid([f"__txid={morsel.value}"]) == txid


@given(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=0, max_value=2**64 - 1))
def test_pos_round_trip(txid: int, checksum: int) -> None:
    assert parse_pos(format_pos(Pos(txid, checksum))) == Pos(txid, checksum)


@given(st.integers(min_value=-(2**31), max_value=2**31 - 1))
def test_lag_round_trip(ms: int) -> None:
    assert parse_lag(format_lag(ms)) == ms
