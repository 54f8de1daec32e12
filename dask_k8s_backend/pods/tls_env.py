"""How a pod reads its app's TLS Secret: secretKeyRef env variables that distributed's config turns into TLS.

The Secret itself (certificates, creation, ownership) is made in the user's process by
:mod:`dask_k8s_backend.cluster.tls_secret`; worker pods (:func:`~.builder.tls_step`) and the cluster-mode
scheduler pod only need its name and keys, which live here so that the pod builder does not depend on
the cluster side.
"""

from __future__ import annotations

from typing import Any

from .app_spec import AppSpec

CA_KEY, CERT_KEY, KEY_KEY = "ca.crt", "tls.crt", "tls.key"
# distributed's configuration keys as environment variables (read by `dask worker` at start)
TLS_ENV = {
    "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": CA_KEY,
    "DASK_DISTRIBUTED__COMM__TLS__WORKER__CERT": CERT_KEY,
    "DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY": KEY_KEY,
}
# The scheduler pod (cluster mode) listens as "scheduler"; "client" covers any Client made in the pod.
SCHEDULER_TLS_ENV = {
    "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": CA_KEY,
    "DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__CERT": CERT_KEY,
    "DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__KEY": KEY_KEY,
    "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": CERT_KEY,
    "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": KEY_KEY,
}


def secret_name(app: AppSpec) -> str:
    """Name of the app's TLS Secret (by app id: two clusters with one name never share it)."""
    return f"dask-tls-{app.app_id}"


def tls_env(app: AppSpec, role: str = "worker") -> list[dict[str, Any]]:
    """Env variables that load the Secret's PEMs into distributed's TLS configuration.

    distributed's Security takes PEM contents as well as file paths, so the values never touch
    a file; ``role`` is "worker" (worker pods) or "scheduler" (the cluster-mode scheduler pod).
    """
    name = secret_name(app)
    wanted = SCHEDULER_TLS_ENV if role == "scheduler" else TLS_ENV
    env = [{"name": var, "valueFrom": {"secretKeyRef": {"name": name, "key": key}}} for var, key in wanted.items()]
    env.append({"name": "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION", "value": "True"})
    return env
