"""TLS for the Dask comm between a KubeSparkCluster's scheduler and its worker pods.

Data flow, when ``k8s-backend.security.tls`` is true::

    generate_tls_material()  ──> TlsMaterial (CA, one cert + key signed by it; PEM text, memory only)
        ├──> tls_secret(app, material) ── created through the API ──> Secret "dask-tls-<app id>"
        │        worker pods read it with secretKeyRef env variables (pods/tls_env.py), which
        │        distributed's config turns into the worker's Security (tls:// to the scheduler)
        └──> scheduler_security(material) ──> distributed.Security for the scheduler, the cluster's
                 rpc and the user's Client (Client(cluster) takes ``cluster.security``)

In cluster mode the same Secret is created before the scheduler pod, which reads it with
secretKeyRef env variables too (:func:`~dask_k8s_backend.pods.tls_env.tls_env` with role "scheduler"); the Secret is then owned by
that pod (:func:`own_tls_secret`), so deleting the pod garbage-collects it like the workers, and
``KubeSparkCluster.from_name`` reads it back (:func:`read_tls_material`) to build its client Security.

The Secret carries the app-id label, so ``python -m dask_k8s_backend gc`` finds it like a pod.
Key material is PEM text held in memory and in the Secret only: it is never written to disk by
us, never logged, and :class:`TlsMaterial`'s repr hides it. Certificates name no host: Dask does
not check host names, it checks that the peer's certificate is signed by the app's own CA, so a
worker from another app (another CA) cannot join.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import Any

from .. import labels
from ..kube.errors import NotFound, translate
from ..pods.app_spec import AppSpec
from ..pods.builder import label_value
from ..pods.tls_env import CA_KEY, CERT_KEY, KEY_KEY, secret_name

logger = logging.getLogger(__name__)

VALIDITY = datetime.timedelta(days=365)


@dataclass(frozen=True, repr=False)
class TlsMaterial:
    """A CA certificate and one certificate + private key it signed (PEM text)."""

    ca_cert: str
    cert: str
    key: str

    def __repr__(self) -> str:  # never show the key (nor bulky certificates)
        return "TlsMaterial(<PEM hidden>)"


def _name(common_name: str) -> Any:
    from cryptography.x509.oid import NameOID
    from cryptography import x509

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])


def _certificate(subject: str, issuer: str, public_key: Any, signing_key: Any, *, ca: bool) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("dask-internal")]), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def generate_tls_material(app_id: str) -> TlsMaterial:
    """A fresh CA for this app and one certificate for its scheduler, workers and clients.

    One leaf certificate suffices: every party proves the same thing (it belongs to this app),
    and a per-app CA means a certificate of another app is never accepted.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate(f"dask-k8s-backend CA {app_id}", f"dask-k8s-backend CA {app_id}",
                           ca_key.public_key(), ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(f"dask {app_id}", f"dask-k8s-backend CA {app_id}", key.public_key(), ca_key, ca=False)
    pem = serialization.Encoding.PEM
    return TlsMaterial(
        ca_cert=ca_cert.public_bytes(pem).decode(),
        cert=cert.public_bytes(pem).decode(),
        key=key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode(),
    )


def scheduler_security(material: TlsMaterial) -> Any:
    """distributed.Security for the scheduler and this process's clients (encryption required)."""
    from distributed.security import Security

    return Security(
        require_encryption=True,
        tls_ca_file=material.ca_cert,
        tls_scheduler_cert=material.cert, tls_scheduler_key=material.key,
        tls_client_cert=material.cert, tls_client_key=material.key,
        tls_worker_cert=material.cert, tls_worker_key=material.key,
    )


def tls_secret(app: AppSpec, material: TlsMaterial) -> dict[str, Any]:
    """The Secret manifest holding the PEMs the worker pods need (labelled with the app id)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": secret_name(app),
            "namespace": app.namespace,
            "labels": {labels.APP_ID: app.app_id, labels.APP_NAME: label_value(app.app_name)},
        },
        "stringData": {CA_KEY: material.ca_cert, CERT_KEY: material.cert, KEY_KEY: material.key},
    }


def create_tls_secret(api_client: Any, app: AppSpec, material: TlsMaterial) -> None:
    """Create the app's Secret (blocking; run it in a thread). Errors come out translated."""
    from kubernetes import client as k8s

    try:
        k8s.CoreV1Api(api_client).create_namespaced_secret(app.namespace, tls_secret(app, material),
                                                           _preload_content=False)
    except Exception as e:
        raise translate(e, f"create secret {secret_name(app)} in namespace {app.namespace}") from None
    logger.info("created TLS secret %s for app %s", secret_name(app), app.app_id)


def delete_tls_secret(api_client: Any, app: AppSpec) -> None:
    """Delete the app's Secret (blocking; a missing one is fine)."""
    from kubernetes import client as k8s

    try:
        k8s.CoreV1Api(api_client).delete_namespaced_secret(secret_name(app), app.namespace, _preload_content=False)
    except Exception as e:
        error = translate(e, f"delete secret {secret_name(app)} in namespace {app.namespace}")
        if not isinstance(error, NotFound):
            raise error from None


def own_tls_secret(api_client: Any, app: AppSpec, owner: dict[str, Any]) -> None:
    """Make the scheduler pod (cluster mode) own the Secret: deleting the pod garbage-collects it.

    The Secret must exist before the pod (the pod reads it at start), so the owner, whose uid is
    known only once the pod is created, is added afterwards.
    """
    from kubernetes import client as k8s

    body = {"metadata": {"ownerReferences": [owner]}}
    try:
        k8s.CoreV1Api(api_client).patch_namespaced_secret(secret_name(app), app.namespace, body,
                                                          _preload_content=False)
    except Exception as e:
        raise translate(e, f"patch secret {secret_name(app)} in namespace {app.namespace}") from None
    logger.debug("TLS secret %s is owned by pod %s", secret_name(app), owner.get("name"))


def read_tls_material(api_client: Any, app: AppSpec) -> TlsMaterial:
    """The app's PEMs read back from its Secret (``from_name`` on a TLS cluster-mode cluster)."""
    import base64
    import json

    from kubernetes import client as k8s

    try:
        response = k8s.CoreV1Api(api_client).read_namespaced_secret(secret_name(app), app.namespace,
                                                                    _preload_content=False)
    except Exception as e:
        raise translate(e, f"get secret {secret_name(app)} in namespace {app.namespace}") from None
    data = json.loads(response.data).get("data") or {}
    pem = {key: base64.b64decode(data.get(key, "")).decode() for key in (CA_KEY, CERT_KEY, KEY_KEY)}
    if not all(pem.values()):
        raise ValueError(f"the TLS secret {secret_name(app)} in namespace {app.namespace} lacks "
                         f"{', '.join(k for k, v in pem.items() if not v)}; the cluster cannot be reconnected to")
    return TlsMaterial(ca_cert=pem[CA_KEY], cert=pem[CERT_KEY], key=pem[KEY_KEY])
