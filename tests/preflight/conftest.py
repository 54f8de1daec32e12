"""A Kubernetes with restricted users, reached as a real cluster (k8s:// + kubeconfig).

The embedded Kubernetes by default; upstream's kube-apiserver with ``--k8s-kubeconfig`` (servers.py),
whose RBAC authorizes the restricted identities for real. Each restricted user lacks exactly one
permission the backend uses, required or optional (``no-<verb>-<resource>``), ``nothing`` has
none, and ``rbac-yaml`` has exactly the Role of deploy/rbac.yaml (on upstream: the file's
ServiceAccount, with the file applied as it is): the refusal paths go through the real HTTP API
with real tokens. Leak checks: no pod of a refused cluster exists (checked through the API) and no
worker process outlives a test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_helpers import assert_no_worker_processes_left, list_pods, merge_kwargs, wait_until

from dask_k8s_backend.cluster.preflight_access import CLIENT_MODE_PERMISSIONS, OPTIONAL_PERMISSIONS, Permission

from .servers import api_server

ROOT = Path(__file__).resolve().parents[2]
RBAC_YAML = ROOT / "deploy" / "rbac.yaml"


def user_name(permission: Permission) -> str:
    return f"no-{permission.verb}-{permission.full_resource.replace('/', '-')}"


def rule(permission: Permission, namespace: str = "default") -> dict:
    return {"apiGroups": [permission.group], "resources": [permission.full_resource], "verbs": [permission.verb],
            "namespaces": [namespace]}


def rbac_yaml_rules(namespace: str) -> list[dict]:
    docs = list(yaml.safe_load_all(RBAC_YAML.read_text()))
    role = next(d for d in docs if d["kind"] == "Role")
    return [{**r, "namespaces": [namespace]} for r in role["rules"]]


def restricted_users() -> dict[str, list[dict]]:
    every = CLIENT_MODE_PERMISSIONS + OPTIONAL_PERMISSIONS
    users = {user_name(p): [rule(q) for q in every if q != p] for p in every}
    users["nothing"] = []
    users["rbac-yaml"] = rbac_yaml_rules("default")
    return users


@pytest.fixture(scope="module")
def kube(request):
    with api_server(request, restricted_users(), manifests={"rbac-yaml": RBAC_YAML}, kubelet="process", nodes=1,
                    cpu="16", memory="32Gi") as server:
        yield server


@pytest.fixture(scope="module")
def core_api(kube):
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=kube.kubeconfig)
    yield client.CoreV1Api(api_client)
    api_client.close()


def cluster_kwargs(kube, kubeconfig: str | None = None, **extra: Any) -> dict[str, Any]:
    """A small, fast KubeSparkCluster on the test's server and namespace, as ``kubeconfig``'s user (default: admin)."""
    kwargs: dict[str, Any] = dict(
        master=f"k8s://{kube.url}", namespace=kube.namespace, worker_memory="256MiB", worker_cores=1, quiet=True,
        authenticate={"kubeconfig": kubeconfig or kube.kubeconfig},
        executor={"delete-grace-period": "2s"}, worker={"death-timeout": "20s"},
    )
    return merge_kwargs(kwargs, extra)


def worker_pods(core_api, namespace: str) -> list[dict]:
    """Every worker pod of any app in ``namespace``, read through the API as the admin."""
    return list_pods(core_api, "dask-k8s-backend/role=worker", namespace)


@pytest.fixture(autouse=True)
def no_leaked_workers(request):
    """No worker outlives a test: on the embedded server its process is our child; on upstream it runs under
    a node agent, so the pods of the test namespace are checked instead (deleted pods go within the grace period)."""
    yield
    assert_no_worker_processes_left()
    kube = request.getfixturevalue("kube") if "kube" in request.fixturenames else None
    if kube is not None and kube.kind == "upstream":
        wait_until(lambda: not worker_pods(kube.core, kube.namespace), timeout=60, what="no worker pod left")
