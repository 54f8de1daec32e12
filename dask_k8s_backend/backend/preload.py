"""Scheduler preload for cluster deploy mode: installs the backend plugin in a scheduler pod.

``dask scheduler --preload dask_k8s_backend.backend.preload`` runs ``dask_setup`` before the
scheduler's plugins start. It reads what the notebook put in the pod's environment (app
identity and configuration overrides, never secrets), connects to the API server (in-cluster
service account on a real cluster), reads its own pod so that worker pods get an
ownerReference to it, and adds :class:`KubernetesSchedulerBackend`.

Spark's rule for cluster mode applies: the scheduler must know its own pod name (POD_NAME from
the downward API, or ``k8s-backend.scheduler.pod-name``), else it refuses to start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

from ..config import load_settings
from ..kube.master import resolve_manager
from ..pods.app_spec import AppSpec
from ..pods.builder import owner_reference
from .plugin import KubernetesSchedulerBackend

logger = logging.getLogger(__name__)

#: What the notebook puts in the scheduler pod's environment for :func:`dask_setup` (cluster/cluster_mode.py
#: writes them): the app's identity as JSON, and the configuration overrides as JSON (never secrets).
APP_ENV = "DASK_K8S_BACKEND_APP"
OVERRIDES_ENV = "DASK_K8S_BACKEND_OVERRIDES"


def _own_pod_name(settings: Any) -> str:
    name = os.environ.get("POD_NAME") or settings.scheduler.pod_name
    if not name:
        raise RuntimeError(
            "cluster mode: the scheduler does not know its own pod name; set the POD_NAME environment variable "
            "from the downward API (fieldRef metadata.name) or k8s-backend.scheduler.pod-name"
        )
    return name


async def dask_setup(scheduler: Any) -> None:
    """Install the backend; a scheduler pod without it is useless, so any failure ends the process."""
    try:
        await _install_backend(scheduler)
    except BaseException:
        logger.exception("cluster mode: could not install the Kubernetes backend; the scheduler pod exits")
        logging.shutdown()
        os._exit(1)


async def _install_backend(scheduler: Any) -> None:
    from kubernetes import client as k8s

    app = AppSpec(**json.loads(os.environ[APP_ENV]))
    settings = load_settings(json.loads(os.environ.get(OVERRIDES_ENV, "{}")))
    pod_name = _own_pod_name(settings)
    connection = await asyncio.to_thread(resolve_manager(settings.master).connect, settings.master, settings)
    core = k8s.CoreV1Api(connection.api_client)
    own_pod = json.loads((await asyncio.to_thread(core.read_namespaced_pod, pod_name, app.namespace, _preload_content=False)).data)
    plugin = KubernetesSchedulerBackend(settings=settings, app=app, connection=connection, owner=owner_reference(own_pod))
    scheduler.add_plugin(plugin)
    logger.info("cluster mode: backend for app %s installed in scheduler pod %s", app.app_id, pod_name)
