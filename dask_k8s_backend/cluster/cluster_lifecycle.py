"""What a KubeSparkCluster creates when it starts and deletes when it closes (or is never closed).

The start and close paths of :class:`~dask_k8s_backend.cluster.kube_spark_cluster.KubeSparkCluster`
apart from the class, which only orders the steps. Data flow::

    start:  client mode ─> [TLS: certificates ─> the app's Secret] ─> a Scheduler in this process with the
                           backend plugin installed (start_local_scheduler)
            from_name   ─> the running scheduler pod ─> [TLS: its Secret's certificates] ─> its address
            (cluster mode's own pod and Service: cluster_mode.py)
    close:  the backend deletes the worker pods (shutdown_backend) ─> the Secret, the scheduler pod, the
            connection, each step best effort (guarded) ─> one sentence saying what is left (what_close_left)
    never closed: weakref.finalize ─> reap_pods deletes the app's pods and Lease with the blocking client

The functions take the cluster through :class:`StartingCluster`, declared here so that this module
needs no import of the class.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import suppress
from typing import Any, Protocol
from urllib.parse import urlsplit

from distributed.scheduler import Scheduler
from distributed.security import Security

from .. import labels
from ..backend.plugin import KubernetesSchedulerBackend
from ..config import Settings
from ..kube.master import KubeConnection
from ..pods.builder import AppSpec
from .cluster_mode import find_scheduler_pod, scheduler_address, scheduler_uses_tls
from .tls_secret import create_tls_secret, generate_tls_material, read_tls_material, scheduler_security

# The cluster's own logger: what start and close report is filtered under KubeSparkCluster's module name.
logger = logging.getLogger(f"{__package__}.kube_spark_cluster")


class StartingCluster(Protocol):
    """What starting and closing use of a KubeSparkCluster, declared here so that this module needs no import of it."""

    app: AppSpec
    settings: Settings
    connection: KubeConnection | None
    scheduler: Scheduler | None
    scheduler_comm: Any
    security: Security
    shutdown_on_close: bool
    pods_left_after_close: int
    _pod_template: dict | None
    _tls_secret: bool

    async def _start_tls(self) -> str: ...


# ------------------------------------------------------------------ start
def loopback_if_local(connection: KubeConnection) -> str | None:
    """A local API server (e.g. the embedded one reached through k8s://) runs pods on this machine:
    they reach the scheduler on the loopback. Otherwise None lets Dask pick the outbound address."""
    host = urlsplit(connection.api_client.configuration.host).hostname or ""
    return "127.0.0.1" if host in ("localhost", "::1") or host.startswith("127.") else None


async def start_local_scheduler(cluster: StartingCluster) -> str:
    """Client mode: a Dask scheduler in this process with the backend plugin installed; returns its address."""
    assert cluster.connection is not None
    options = cluster.settings.scheduler
    host = options.host or cluster.connection.scheduler_host or loopback_if_local(cluster.connection)
    plugin = KubernetesSchedulerBackend(
        settings=cluster.settings, app=cluster.app, connection=cluster.connection, pod_template=cluster._pod_template
    )
    protocol = await cluster._start_tls() if cluster.settings.security.tls else None
    cluster.scheduler = Scheduler(
        security=cluster.security,
        protocol=protocol,
        host=host,
        port=options.port,
        dashboard_address=options.dashboard_address,
        dashboard=options.dashboard_address is not None,
        plugins=[plugin],
        validate=False,
    )
    await cluster.scheduler
    return cluster.scheduler.address


async def start_tls(cluster: StartingCluster) -> str:
    """Generate this app's certificates, store them in its Secret for the pods; returns "tls"."""
    assert cluster.connection is not None
    material = await asyncio.to_thread(generate_tls_material, cluster.app.app_id)
    await asyncio.to_thread(create_tls_secret, cluster.connection.api_client, cluster.app, material)
    cluster._tls_secret = True
    cluster.security = scheduler_security(material)
    return "tls"


async def attach_to_running_scheduler(cluster: StartingCluster) -> str:
    """``from_name``: the running cluster-mode scheduler pod's address (the app's id is read from its labels)."""
    assert cluster.connection is not None
    pod = await find_scheduler_pod(cluster.connection, cluster.app.namespace, cluster.app.app_name)
    cluster.app = AppSpec(app_id=pod["metadata"]["labels"][labels.APP_ID], app_name=cluster.app.app_name, namespace=cluster.app.namespace)
    tls = scheduler_uses_tls(pod, cluster.app)
    if tls:
        await attach_tls(cluster)
    return scheduler_address(pod, cluster.app, cluster.connection, cluster.settings.scheduler.connect_via, tls)


async def attach_tls(cluster: StartingCluster) -> None:
    """A TLS cluster-mode scheduler accepts only this app's certificates: read them from its Secret."""
    assert cluster.connection is not None
    material = await asyncio.to_thread(read_tls_material, cluster.connection.api_client, cluster.app)
    cluster.security = scheduler_security(material)
    cluster._tls_secret = True  # ours to delete when this handle shuts the cluster down


# ------------------------------------------------------------------ close
async def guarded(what: str, awaitable: Any) -> Any:
    """Shutdown is best effort: log a failing step and let the next one run."""
    try:
        return await awaitable
    except Exception:
        logger.warning("Error while %s", what, exc_info=True)
        return None


async def shutdown_backend(cluster: StartingCluster) -> None:
    """Retire workers (their data is not needed any more, so just close them) and delete every pod."""
    result = await guarded(
        "deleting the worker pods", cluster.scheduler_comm.k8s_shutdown(timeout=60)  # type: ignore[union-attr]
    )
    cluster.pods_left_after_close = result.get("remaining", -1) if result else -1
    if result and result.get("remaining"):
        logger.warning("%d pods of app %s were still present after close", result["remaining"], cluster.app.app_id)


def what_close_left(cluster: StartingCluster, shutdown: bool) -> str:
    """One sentence for the closed cluster's status and for refusing its scale/adapt: what is left, what to do."""
    if not shutdown and cluster.settings.deploy_mode == "cluster":
        return (f"its scheduler pod and workers were left running (shutdown_on_close=False); reconnect with "
                f"KubeSparkCluster.from_name({cluster.app.app_name!r})")
    if not shutdown:
        return ("its scheduler stopped and its worker pods were left to exit on their own after "
                "k8s-backend.worker.death-timeout (shutdown_on_close=False); create a new KubeSparkCluster to run "
                "workers again")
    left = (f"{cluster.pods_left_after_close} of its pods were still present at close; "
            if cluster.pods_left_after_close > 0 else "")
    return f"{left}its scheduler and worker pods were shut down; create a new KubeSparkCluster to run workers again"


# ------------------------------------------------------------------ never closed
def delete_app_pods_now(connection: KubeConnection, namespace: str, app_id: str, timeout: float = 30) -> int:
    """Synchronously delete every pod of an app and wait until none is listed; returns how many remain.

    For interpreter exit: by then Python's thread pools refuse new work, so the asynchronous
    shutdown path cannot run; this uses the blocking client directly.
    """
    from kubernetes import client as k8s

    core = k8s.CoreV1Api(connection.api_client)
    selector = f"{labels.APP_ID}={app_id}"
    deadline = time.monotonic() + timeout
    while True:
        core.delete_collection_namespaced_pod(namespace, label_selector=selector, _preload_content=False)
        remaining = len(core.list_namespaced_pod(namespace, label_selector=selector).items)
        if remaining == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    _delete_app_leases_now(k8s.CoordinationV1Api(connection.api_client), namespace, selector)
    return remaining


def _delete_app_leases_now(coordination: Any, namespace: str, selector: str) -> None:
    """The app's heartbeat Lease goes with its pods (else `status` shows a dead app until `gc`)."""
    from kubernetes import client as k8s

    try:
        for lease in coordination.list_namespaced_lease(namespace, label_selector=selector).items:
            coordination.delete_namespaced_lease(lease.metadata.name, namespace)
    except k8s.ApiException as e:
        logger.debug("deleting the heartbeat lease at exit failed (%s); it expires and gc removes it", e.reason)


def reap_pods(connection: KubeConnection, namespace: str, app_id: str) -> None:
    """Runs when a cluster that was never closed is garbage-collected or the interpreter exits."""
    try:
        remaining = delete_app_pods_now(connection, namespace, app_id)
        if remaining:
            logger.warning("%d pods of app %s were still present after cleanup", remaining, app_id)
    except Exception as e:
        logger.warning("deleting the pods of app %s failed: %s; run `python -m dask_k8s_backend gc --app %s`",
                       app_id, e, app_id)
    finally:
        with suppress(Exception):
            connection.close()
