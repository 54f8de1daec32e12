"""Cluster deploy mode: the Dask scheduler (with the backend plugin) runs in its own pod.

Spark's "submit in driver": the notebook creates a scheduler pod and a Service in front of it,
then talks to the scheduler over Dask RPC exactly as in client mode. Inside the pod,
``dask_k8s_backend.backend.preload`` installs :class:`KubernetesSchedulerBackend`, which owns
the worker pods through ownerReferences to the scheduler pod: deleting the scheduler pod
garbage-collects every worker.

How the notebook reaches the scheduler (``k8s-backend.scheduler.connect-via``):
- ``pod-ip``: the pod's IP (the embedded Kubernetes, or a notebook inside the cluster network);
- ``service``: the Service's DNS name ``<name>.<namespace>.svc`` (a notebook inside the cluster);
- an explicit address such as ``tcp://localhost:8786`` after ``kubectl port-forward svc/<name> 8786``.
``auto`` picks ``pod-ip`` on the embedded Kubernetes and ``service`` elsewhere.

With ``k8s-backend.security.tls`` the notebook creates the app's TLS Secret before the scheduler
pod, the pod reads it through secretKeyRef env variables and listens on ``tls://`` (its backend
knows TLS is on, so its workers read the same Secret), the Secret is then owned by the pod, and
the notebook connects with a Security built from the same material (see ``security.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any, Protocol

from distributed.security import Security

from .. import labels
from ..backend.preload import APP_ENV, OVERRIDES_ENV
from ..config import Settings
from ..kube.master import KubeConnection
from ..pods.builder import AppSpec, owner_reference, pod_name_prefix
from ..pods.exits import pending_reason
from ..pods.tls_env import secret_name, tls_env
from .tls_secret import own_tls_secret

logger = logging.getLogger(__name__)


class ClusterInPods(Protocol):
    """What cluster deploy mode uses of a KubeSparkCluster, declared here so that cluster_mode needs no import of it."""

    app: AppSpec
    settings: Settings
    overrides: dict[str, Any]
    connection: KubeConnection | None
    security: Security | None

    def _log(self, message: str) -> None: ...

    async def _start_tls(self) -> str: ...

SCHEDULER_PORT = 8786
DASHBOARD_PORT = 8787
SECRET_KEYS = ("authenticate.oauth-token", "authenticate.client-key-file")


def scheduler_pod_name(app: AppSpec) -> str:
    return f"{pod_name_prefix(app.app_name, suffix='-scheduler')}-scheduler"


def _scheduler_labels(app: AppSpec) -> dict[str, str]:
    return {labels.APP_ID: app.app_id, labels.APP_NAME: app.app_name[:63], labels.ROLE: labels.ROLE_SCHEDULER}


def pod_overrides(overrides: dict[str, Any], connection: KubeConnection) -> dict[str, Any]:
    """The configuration the scheduler pod runs with: the user's, minus secrets, plus how to reach the API."""
    clean = {k: v for k, v in overrides.items() if k not in SECRET_KEYS and not k.startswith("authenticate.")}
    clean["deploy-mode"] = "client"  # inside the pod the scheduler is local to the backend
    if connection.serves_embedded_kubernetes():
        # The embedded Kubernetes projects no service-account token: its scheduler "pod" is a local
        # process and uses the kubeconfig file (mode 0600) instead. Every other server (the upstream
        # control plane on this machine too) gives the pod its own token, and deploy/rbac.yaml decides.
        clean["master"] = f"k8s://{connection.api_client.configuration.host}"
        clean["authenticate.kubeconfig"] = (
            connection.embedded.kubeconfig if connection.embedded
            else connection.kubeconfig or overrides.get("authenticate.kubeconfig") or os.environ.get("KUBECONFIG")
        )
    else:
        clean["master"] = "k8s://"  # in-cluster service account of the scheduler pod
    return clean


def scheduler_service_account(settings: Settings, connection: KubeConnection | None) -> str | None:
    """The service account the preflight checks for the scheduler pod, or None (client mode, nothing to check).

    The pod runs as ``k8s-backend.worker.service-account``, else the namespace's ``default``. A named
    account is always checked: a pod naming a missing one is refused, and its rules are the pod's on a
    real cluster. The implicit ``default`` is checked only where the pod uses its token: on an API
    server on this machine (the embedded Kubernetes) the scheduler process uses the kubeconfig
    (:func:`pod_overrides`), which the client's own preflight already checked.
    """
    if settings.deploy_mode != "cluster":
        return None
    if settings.worker.service_account:
        return settings.worker.service_account
    if connection is None or connection.serves_embedded_kubernetes():
        return None
    return "default"


def build_scheduler_pod(cluster: ClusterInPods, connection: KubeConnection) -> dict[str, Any]:
    app, settings = cluster.app, cluster.settings
    # The in-pod backend must know TLS is on (its workers then read the Secret), however it was set.
    overrides = {**pod_overrides(cluster.overrides, connection), "security.tls": settings.security.tls}
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": APP_ENV, "value": json.dumps({"app_id": app.app_id, "app_name": app.app_name, "namespace": app.namespace})},
        {"name": OVERRIDES_ENV, "value": json.dumps(overrides)},
    ]
    tls_args: list[str] = []
    if settings.security.tls:
        env += tls_env(app, role="scheduler")
        tls_args = ["--protocol", "tls"]
    container = {
        "name": "scheduler",
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["dask", "scheduler"],
        "args": [
            "--host", "$(POD_IP)", "--port", str(SCHEDULER_PORT), "--dashboard-address", f":{DASHBOARD_PORT}",
            "--preload", "dask_k8s_backend.backend.preload", *tls_args,
        ],
        "env": env,
        "ports": [{"name": "tcp-comm", "containerPort": SCHEDULER_PORT}, {"name": "http-dashboard", "containerPort": DASHBOARD_PORT}],
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
    }
    if settings.worker.secure_defaults:
        container["securityContext"] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if settings.worker.service_account:
        spec["serviceAccountName"] = settings.worker.service_account
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": scheduler_pod_name(app), "namespace": app.namespace, "labels": _scheduler_labels(app)},
        "spec": spec,
    }


def build_scheduler_service(app: AppSpec, owner: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": scheduler_pod_name(app),
            "namespace": app.namespace,
            "labels": _scheduler_labels(app),
            "ownerReferences": [owner],
        },
        "spec": {
            "selector": _scheduler_labels(app),
            "ports": [
                {"name": "tcp-comm", "port": SCHEDULER_PORT, "targetPort": SCHEDULER_PORT},
                {"name": "http-dashboard", "port": DASHBOARD_PORT, "targetPort": DASHBOARD_PORT},
            ],
        },
    }



async def _wait_for_scheduler_pod(core: Any, app: AppSpec, name: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        pod = json.loads((await asyncio.to_thread(core.read_namespaced_pod, name, app.namespace, _preload_content=False)).data)
        phase = pod.get("status", {}).get("phase")
        if phase == "Running" and pod["status"].get("podIP"):
            return pod
        if phase in ("Failed", "Succeeded"):
            raise RuntimeError(f"the scheduler pod {name} exited ({phase}) before the scheduler started; see `kubectl logs {name}`")
        if time.monotonic() > deadline:
            reason = pending_reason(pod) or "no reason reported"
            raise TimeoutError(f"the scheduler pod {name} was not running after {timeout:.0f} s: {reason}")
        await asyncio.sleep(0.2)


def scheduler_address(pod: dict[str, Any], app: AppSpec, connection: KubeConnection, connect_via: str,
                      tls: bool = False) -> str:
    """Where the notebook reaches the scheduler; ``tls``: the scheduler listens on tls:// only."""
    scheme = "tls" if tls else "tcp"
    if connect_via == "auto":
        connect_via = "pod-ip" if connection.api_server_is_local() else "service"
    if connect_via == "pod-ip":
        return f"{scheme}://{pod['status']['podIP']}:{SCHEDULER_PORT}"
    if connect_via == "service":
        return f"{scheme}://{pod['metadata']['name']}.{app.namespace}.svc:{SCHEDULER_PORT}"
    if tls and connect_via.startswith("tcp://"):  # e.g. a port-forward: the same port, TLS inside
        return "tls://" + connect_via.removeprefix("tcp://")
    return connect_via


def scheduler_uses_tls(pod: dict[str, Any], app: AppSpec) -> bool:
    """Whether a running scheduler pod was started with TLS (it reads the app's TLS Secret)."""
    for container in pod.get("spec", {}).get("containers") or []:
        for var in container.get("env") or []:
            ref = (var.get("valueFrom") or {}).get("secretKeyRef") or {}
            if ref.get("name") == secret_name(app):
                return True
    return False


async def _scheduler_pod_failure(core: Any, app: AppSpec, name: str) -> str | None:
    """If the scheduler pod has ended, why (with the end of its log)."""
    pod = json.loads((await asyncio.to_thread(core.read_namespaced_pod, name, app.namespace, _preload_content=False)).data)
    if pod.get("status", {}).get("phase") not in ("Failed", "Succeeded"):
        return None
    log = (await asyncio.to_thread(core.read_namespaced_pod_log, name, app.namespace, tail_lines=15, _preload_content=False)).data
    return f"the scheduler pod {name} exited before the scheduler was ready; its log ends with:\n{log.decode(errors='replace')}"


async def _wait_for_scheduler(address: str, timeout: float, core: Any, app: AppSpec, name: str,
                              connection_args: dict[str, Any] | None = None) -> None:
    """Wait until the scheduler answers with the backend plugin installed, or fail with the reason."""
    from distributed.core import rpc

    deadline = time.monotonic() + timeout
    while True:
        try:
            async with rpc(address, timeout=2, connection_args=connection_args or {}) as scheduler:
                await scheduler.k8s_status()  # answers only once the backend plugin is installed
                return
        except (OSError, asyncio.TimeoutError, KeyError):
            failure = await _scheduler_pod_failure(core, app, name)
            if failure:
                raise RuntimeError(failure) from None
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"could not reach the scheduler at {address} within {timeout:.0f} s; if the notebook is outside "
                    "the cluster network, run `kubectl port-forward svc/<name> 8786` and set "
                    "k8s-backend.scheduler.connect-via to tcp://localhost:8786"
                ) from None
        await asyncio.sleep(0.2)


async def start_cluster_mode(cluster: ClusterInPods) -> str:
    """Create the scheduler pod and Service; return the address the notebook connects to."""
    from kubernetes import client as k8s

    connection = cluster.connection
    assert connection is not None
    core = k8s.CoreV1Api(connection.api_client)
    tls = cluster.settings.security.tls
    if tls:  # the Secret exists before the pod that reads it; close() deletes it if anything below fails
        await cluster._start_tls()
    pod = build_scheduler_pod(cluster, connection)
    name = pod["metadata"]["name"]
    created = json.loads(
        (await asyncio.to_thread(core.create_namespaced_pod, cluster.app.namespace, pod, _preload_content=False)).data
    )
    cluster._log(f"created scheduler pod {name}")
    owner = owner_reference(created)
    if tls:
        await asyncio.to_thread(own_tls_secret, connection.api_client, cluster.app, owner)
    service = build_scheduler_service(cluster.app, owner)
    await asyncio.to_thread(core.create_namespaced_service, cluster.app.namespace, service, _preload_content=False)
    running = await _wait_for_scheduler_pod(core, cluster.app, name, cluster.settings.allocation.pending_timeout)
    address = scheduler_address(running, cluster.app, connection, cluster.settings.scheduler.connect_via, tls)
    await _wait_for_scheduler(address, 120, core, cluster.app, name, cluster.security.get_connection_args("client"))
    return address


async def delete_scheduler_pod(cluster: ClusterInPods, timeout: float = 60) -> None:
    """Delete the scheduler pod and wait until it is gone (its Service and workers go with it)."""
    from kubernetes import client as k8s

    connection = cluster.connection
    assert connection is not None
    core = k8s.CoreV1Api(connection.api_client)
    name = scheduler_pod_name(cluster.app)
    deadline = time.monotonic() + timeout
    while True:
        try:
            await asyncio.to_thread(core.delete_namespaced_pod, name, cluster.app.namespace, _preload_content=False)
        except k8s.ApiException as e:
            if e.status == 404:
                return
            raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"the scheduler pod {name} was still present {timeout:.0f} s after it was deleted")
        await asyncio.sleep(0.2)


async def find_scheduler_pod(connection: KubeConnection, namespace: str, name: str) -> dict[str, Any]:
    """The running scheduler pod of the app called ``name`` (for ``KubeSparkCluster.from_name``)."""
    from kubernetes import client as k8s

    core = k8s.CoreV1Api(connection.api_client)
    selector = f"{labels.ROLE}={labels.ROLE_SCHEDULER},{labels.APP_NAME}={name}"
    pods = json.loads(
        (await asyncio.to_thread(core.list_namespaced_pod, namespace, label_selector=selector, _preload_content=False)).data
    )["items"]
    running = [p for p in pods if p.get("status", {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
    if not running:
        raise ValueError(
            f"KubeSparkCluster.from_name({name!r}): no running scheduler pod of a cluster named {name!r} in namespace "
            f"{namespace!r}; list clusters with `python -m dask_k8s_backend status --namespace {namespace}`"
        )
    return running[0]
