"""`SIXPN_LITEFS_LAB=<id>` runs this directory's lab tests in a lab of their own (so a developer's run does not
share the session lab `tl` another suite may be using); unset, the shared `lab` fixture is used."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from netns_lab.lab import Lab
from tests.conftest import TOPOLOGY, lab_unavailable

_OWN_LAB = os.environ.get("SIXPN_LITEFS_LAB", "")

if _OWN_LAB:

    @pytest.fixture(scope="session")
    def lab() -> Iterator[Lab]:
        reason = lab_unavailable()
        if reason:
            pytest.skip(reason)
        try:
            yield Lab.up(TOPOLOGY, _OWN_LAB)
        finally:
            Lab.down(_OWN_LAB)
