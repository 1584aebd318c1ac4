from __future__ import annotations

import base64
import stat
import subprocess
from pathlib import Path

import pytest

from wgmesh import keys
from wgmesh.errors import MeshError


def test_generated_public_key_matches_wg_pubkey() -> None:
    pair = keys.generate()
    assert len(base64.b64decode(pair.private)) == 32
    # `wg pubkey` is the reference implementation of the derivation; the key goes in on stdin.
    out = subprocess.run(["wg", "pubkey"], input=pair.private, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == pair.public
    assert keys.public_of(pair.private) == pair.public


def test_repr_hides_private_key() -> None:
    pair = keys.generate()
    assert pair.private not in repr(pair)
    assert pair.private not in str(pair)


@pytest.mark.parametrize("bad", ["", "not base64!", base64.b64encode(b"x" * 31).decode(), "A" * 44 + "=="])
def test_malformed_public_key_is_refused(bad: str) -> None:
    with pytest.raises(MeshError, match="malformed public key"):
        keys.check_public_key(bad)


def test_malformed_key_error_does_not_echo_input() -> None:
    secret = base64.b64encode(b"s" * 33).decode()
    with pytest.raises(MeshError) as info:
        keys.public_of(secret)
    assert secret not in str(info.value)


def test_load_or_create_is_0600_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "host.key"
    first = keys.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = keys.load_or_create(path)
    assert again == first


def test_load_tightens_wide_mode(tmp_path: Path) -> None:
    path = tmp_path / "host.key"
    pair = keys.generate()
    path.write_text(pair.private)
    path.chmod(0o644)
    assert keys.load_or_create(path).public == pair.public
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_write_secret_refuses_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "x.conf"
    keys.write_secret(path, "a", overwrite=False)
    with pytest.raises(MeshError, match="refusing to overwrite"):
        keys.write_secret(path, "b", overwrite=False)
    assert path.read_text() == "a"
