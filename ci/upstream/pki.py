"""Throwaway credentials for an upstream control plane: one CA, its certificates, a token-signing key.

Why here and not in the embedded server's ``tls`` module: the upstream components authenticate
each other and the admin with *client certificates* (user = CN, groups = O), which the embedded
server never needs. Data flow: :func:`make_pki` creates everything under a private directory and
returns a :class:`Pki` of paths; :func:`kubeconfig` turns one client identity into the kubeconfig
dict a component or kubectl reads. Private keys are written 0600 and never logged.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dask_k8s_backend.embedded.api.tls import write_private

logger = logging.getLogger(__name__)

# Names clients use for the API server: loopback, the first service IP of 10.0.0.0/24, and the
# in-cluster DNS names of the `kubernetes` Service (what a pod's in-cluster config verifies).
SERVING_DNS = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
               "kubernetes.default.svc.cluster.local")
SERVING_IPS = ("127.0.0.1", "10.0.0.1")

# Client identities: file stem -> (user, groups). Bootstrap RBAC binds the two system users to
# their ClusterRoles; system:masters is cluster-admin without any binding.
CLIENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "admin": ("kubernetes-admin", ("system:masters",)),
    "kube-scheduler": ("system:kube-scheduler", ()),
    "kube-controller-manager": ("system:kube-controller-manager", ()),
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", ("system:masters",)),
}


# The aggregation layer's identity: the API server proxies to extension API servers with it, and
# they (and the controller manager's and scheduler's delegated authentication) read its CA from
# kube-system/extension-apiserver-authentication. Without one they log "missing content for CA
# bundle ... requestheader-client-ca-file" every few seconds.
FRONT_PROXY_CLIENT = "front-proxy-client"


@dataclass(frozen=True)
class CertPair:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Paths of everything :func:`make_pki` wrote."""

    ca: CertPair
    serving: CertPair
    clients: dict[str, CertPair]
    sa_public: Path
    sa_private: Path
    front_proxy_ca: CertPair
    front_proxy_client: CertPair


def _name(common_name: str, groups: tuple[str, ...] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
    return x509.Name(attributes + [x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_pair(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> CertPair:
    pair = CertPair(directory / f"{stem}.crt", directory / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private(pair.key, _pem_key(key))
    return pair


class _Issuer:
    """Signs leaf certificates with one CA key; validity starts 5 minutes back to absorb clock skew."""

    def __init__(self, days: int, common_name: str) -> None:
        self.start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
        self.end = self.start + datetime.timedelta(days=days)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(common_name)
        usage = x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                              key_encipherment=False, data_encipherment=False, key_agreement=False,
                              encipher_only=False, decipher_only=False)
        self.cert = (
            self._builder(subject, self.key.public_key()).issuer_name(subject)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def _builder(self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).public_key(public_key)
                .serial_number(x509.random_serial_number()).not_valid_before(self.start).not_valid_after(self.end))

    def leaf(self, subject: x509.Name, usage: x509.ObjectIdentifier,
             san: x509.SubjectAlternativeName | None = None) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A new key and a certificate for it, for server or client authentication."""
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            self._builder(subject, key.public_key()).issuer_name(self.cert.subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        return builder.sign(self.key, hashes.SHA256()), key


def _write_service_account_keys(directory: Path) -> tuple[Path, Path]:
    """RSA, because every version of the token signer and verifier accepts RS256."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public, private = directory / "sa.pub", directory / "sa.key"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    write_private(private, _pem_key(key))
    return public, private


def make_pki(directory: Path, *, days: int = 7) -> Pki:
    """Create the CA, the serving and client certificates and the service-account keys in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    issuer = _Issuer(days, "dask-k8s-backend upstream CA")
    ca = _write_pair(directory, "ca", issuer.cert, issuer.key)
    san = x509.SubjectAlternativeName([x509.DNSName(n) for n in SERVING_DNS]
                                      + [x509.IPAddress(ipaddress.ip_address(i)) for i in SERVING_IPS])
    serving = _write_pair(directory, "apiserver",
                          *issuer.leaf(_name("kube-apiserver"), ExtendedKeyUsageOID.SERVER_AUTH, san))
    clients = {stem: _write_pair(directory, stem, *issuer.leaf(_name(user, groups), ExtendedKeyUsageOID.CLIENT_AUTH))
               for stem, (user, groups) in CLIENTS.items()}
    sa_public, sa_private = _write_service_account_keys(directory)
    # A CA of its own, as kubeadm has: a certificate it signs lets the holder assert any user in
    # X-Remote-User headers, so no ordinary client certificate may qualify.
    proxy_issuer = _Issuer(days, "dask-k8s-backend upstream front-proxy CA")
    front_proxy_ca = _write_pair(directory, "front-proxy-ca", proxy_issuer.cert, proxy_issuer.key)
    front_proxy_client = _write_pair(directory, "front-proxy-client",
                                     *proxy_issuer.leaf(_name(FRONT_PROXY_CLIENT), ExtendedKeyUsageOID.CLIENT_AUTH))
    logger.info("Credentials for the upstream control plane written to %s", directory)
    return Pki(ca=ca, serving=serving, clients=clients, sa_public=sa_public, sa_private=sa_private,
               front_proxy_ca=front_proxy_ca, front_proxy_client=front_proxy_client)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def kubeconfig(*, server: str, ca: Path, client: CertPair, name: str = "upstream") -> dict:
    """A kubeconfig with the CA and the client's certificate and key inlined (self-contained, so copyable)."""
    return {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority-data": _b64(ca)}}],
        "users": [{"name": name, "user": {"client-certificate-data": _b64(client.cert),
                                          "client-key-data": _b64(client.key)}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": "default"}}],
        "current-context": name,
    }
