"""Credentials of the embedded API server: a throwaway CA, a server certificate, a token, a kubeconfig.

:func:`make_credentials` creates, in a private directory, a self-signed CA and a server
certificate for 127.0.0.1/localhost signed by it (ECDSA P-256, via ``cryptography``), plus a
random bearer token. The API server serves TLS with the certificate and key; clients trust the
CA. :func:`write_kubeconfig` writes the file kubectl and the official client read (server URL,
CA data, token), readable only by its owner (mode 0600) because it holds the token.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Credentials:
    """Paths of the PEM files and the token; ``repr`` never shows the token."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    token: str = field(repr=False)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_credentials(directory: str | Path, *, days: int = 30) -> Credentials:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a token, written under ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    until = now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder().subject_name(_name("dask-k8s-backend embedded CA")).issuer_name(
            _name("dask-k8s-backend embedded CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(_name("kube-apiserver")).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.DNSName("kubernetes"), x509.DNSName("kubernetes.default"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    creds = Credentials(directory / "ca.crt", directory / "apiserver.crt", directory / "apiserver.key",
                        secrets.token_urlsafe(32))
    creds.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    creds.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private(creds.key_file, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    return creds


def write_kubeconfig(path: str | Path, *, server: str, ca_file: Path | None, token: str | None,
                     name: str = "embedded") -> Path:
    """A kubeconfig for ``server`` (mode 0600: it holds the token); returns its path."""
    cluster: dict = {"server": server}
    if ca_file is not None:
        cluster["certificate-authority-data"] = base64.b64encode(Path(ca_file).read_bytes()).decode()
    user: dict = {"token": token} if token else {}
    config = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": "default"}}],
        "current-context": name,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, yaml.safe_dump(config, sort_keys=False).encode())
    os.chmod(path, 0o600)
    return path
