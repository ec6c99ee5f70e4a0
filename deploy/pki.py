"""Certificates and SuperNode keys for a local (or lab) Flower deployment.

* A self-signed CA and a server certificate signed by it, for the SuperLink's TLS. The
  server certificate's subjectAltName lists ``IP:127.0.0.1`` (the SuperLink's own
  helpers connect by IP), ``DNS:localhost`` and any extra hosts given (the names/IPs
  SuperNodes on other machines use to reach the SuperLink).
* One ECDSA (P-384) key pair per SuperNode in OpenSSH format, what ``flower-superlink
  --enable-supernode-auth`` expects (``flwr supernode register <key>.pub``; ed25519 keys
  are rejected by Flower 1.41).

Everything is written with the ``cryptography`` package (a Flower dependency), so
neither ``openssl`` nor ``ssh-keygen`` is needed. Private keys are written with mode
0600.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CERT_DAYS = 30


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the CA certificate and the SuperLink's certificate and key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a file only its owner can read (created 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in ["127.0.0.1", "localhost", *hosts]:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    unique = list(dict.fromkeys(names))
    return x509.SubjectAlternativeName(unique)


def make_tls(
    directory: str | os.PathLike[str],
    hosts: list[str] | None = None,
    days: int = CERT_DAYS,
) -> TlsFiles:
    """Write ``ca.crt``, ``server.pem`` and ``server.key`` into ``directory``.

    Parameters
    ----------
    directory : path
        Created if missing.
    hosts : list of str, optional
        Extra DNS names or IP addresses for the server certificate (besides 127.0.0.1
        and localhost).
    days : int
        Validity of both certificates.
    """
    if days < 1:
        raise ValueError(f"days={days} must be >= 1")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(minutes=5)
    until = now + _dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bouquet local CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(list(hosts or [])), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(out / "ca.crt", out / "server.pem", out / "server.key")
    write_private(out / "ca.key", _pem_key(ca_key))
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    write_private(files.server_key, _pem_key(server_key))
    return files


def make_node_key(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write an ECDSA P-384 key pair in OpenSSH format: ``path`` and ``path.pub``.

    Returns
    -------
    (private, public) : tuple of Path
    """
    private = Path(path)
    key = ec.generate_private_key(ec.SECP384R1())
    write_private(
        private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    public = private.with_name(private.name + ".pub")
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + b" bouquet-supernode\n"
    )
    return private, public
