"""WireGuard keys: Curve25519 (X25519) keypairs in WireGuard's base64 form (32 raw bytes, 44 chars).

Private keys are generated here with `cryptography`, stored in 0600 files created with O_EXCL-free
but mode-first `os.open` (the mode is set before any byte is written), and handed to `wg` as a file
path, never on a command line (whitepaper §5.4.1 key generation; `wg(8)` `private-key` takes a file).
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from wgmesh.errors import MeshError

KEY_LEN = 32


@dataclass(frozen=True)
class KeyPair:
    private: str = ""  # base64; repr hides it so a stray log of the object leaks nothing
    public: str = ""

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public!r}, private=<hidden>)"

    __str__ = __repr__


def _raw_public(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def generate() -> KeyPair:
    private = X25519PrivateKey.generate()
    raw = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return KeyPair(private=base64.b64encode(raw).decode(), public=base64.b64encode(_raw_public(private)).decode())


def decode_key(text: str, what: str = "key") -> bytes:
    """The 32 raw bytes of a base64 WireGuard key; the error message never repeats the input."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise MeshError(f"malformed {what}: not base64") from None
    if len(raw) != KEY_LEN:
        raise MeshError(f"malformed {what}: {len(raw)} bytes, a WireGuard key has {KEY_LEN}")
    return raw


def check_public_key(text: str) -> str:
    """A canonical base64 public key, or MeshError."""
    return base64.b64encode(decode_key(text, "public key")).decode()


def public_of(private_b64: str) -> str:
    raw = decode_key(private_b64, "private key")
    return base64.b64encode(_raw_public(X25519PrivateKey.from_private_bytes(raw))).decode()


def write_secret(path: Path, text: str, *, overwrite: bool = True) -> None:
    """Write a secret file created 0600 from the first byte (umask cannot widen it)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (0 if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise MeshError(f"{path} already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise MeshError(f"cannot write {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def load_or_create(path: Path) -> KeyPair:
    """The host key in `path` (base64 private key), made on first use; a wider-than-0600 file is tightened."""
    if path.exists():
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise MeshError(f"cannot read key file {path}: {exc.strerror}") from None
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        return KeyPair(private=text, public=public_of(text))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pair = generate()
    write_secret(path, pair.private + "\n", overwrite=False)
    return pair
