"""TLS termination: one certificate per hostname chosen by SNI (RFC 6066 §3), TLS 1.2 and 1.3, ALPN h2 +
http/1.1, and a self-signed certificate maker for the lab.

A certificate directory holds `<hostname>.crt` + `<hostname>.key` (PEM). A name without its own pair falls
back to a wildcard `*.<parent>` pair, then to `default.crt`/`default.key`, then to the first pair found.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path

from edge_proxy.errors import EdgeProxyError


class TlsError(EdgeProxyError):
    pass


def _context(cert: Path, key: Path, http2: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= ssl.OP_NO_COMPRESSION
    # ALPN (RFC 7301): h2 first when enabled (RFC 9113 §3.2), else HTTP/1.1 only.
    ctx.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"{cert}: cannot load certificate/key: {exc}") from exc
    return ctx


def load_sni_context(cert_dir: str | Path, http2: bool = False) -> ssl.SSLContext:
    """A server context whose certificate follows the client's SNI name."""
    directory = Path(cert_dir)
    pairs = sorted(p for p in directory.glob("*.crt") if p.with_suffix(".key").exists())
    if not pairs:
        raise TlsError(f"{directory}: no <hostname>.crt + <hostname>.key pairs")
    contexts = {p.stem.lower(): _context(p, p.with_suffix(".key"), http2) for p in pairs}
    default = contexts.get("default") or contexts[pairs[0].stem.lower()]

    def pick(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        if not name:
            return
        name = name.lower().rstrip(".")
        chosen = contexts.get(name)
        if chosen is None and "." in name:
            chosen = contexts.get("*." + name.split(".", 1)[1])
        if chosen is not None:
            sslobj.context = chosen

    default.sni_callback = pick
    return default


def make_self_signed(hostname: str, out_dir: str | Path, days: int = 365) -> tuple[Path, Path]:
    """Write `<hostname>.crt` and `<hostname>.key` (0600) for the lab; returns their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    alt: list[x509.GeneralName]
    try:
        alt = [x509.IPAddress(ipaddress.ip_address(hostname))]
    except ValueError:
        alt = [x509.DNSName(hostname)]
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    crt_path = directory / f"{hostname}.crt"
    key_path = directory / f"{hostname}.key"
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    os.chmod(key_path, 0o600)
    crt_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return crt_path, key_path
