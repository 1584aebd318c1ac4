"""LiteFS's path globs: `*` is the only wildcard, it matches across `/`, and the whole path must match.

`/build/*` matches `/build/` and `/build/a/b` but not `/build`; `*.png` matches `/images/pic.png`.
The query string is never part of the path (the caller strips it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Glob:
    pattern: str
    regex: re.Pattern[str]

    def match(self, path: str) -> bool:
        return self.regex.fullmatch(path) is not None


def compile_glob(pattern: str) -> Glob:
    # Everything but `*` is literal: `?`, `[`, `.` and friends mean themselves, as in LiteFS's CompileMatch.
    body = ".*".join(re.escape(part) for part in pattern.split("*"))
    return Glob(pattern, re.compile(body, re.DOTALL))


def any_match(globs: tuple[Glob, ...], path: str) -> bool:
    return any(g.match(path) for g in globs)
