"""Cluster deploy mode on the upstream control plane, authorized by deploy/rbac.yaml and nothing else.

The scheduler pod runs as the ServiceAccount of deploy/rbac.yaml in a namespace of its own; the
node agent projects that account's token into the pod, and the in-pod backend reaches the API
with it (``master: k8s://``, in-cluster configuration), never with the user's kubeconfig. So every
request the backend makes in the pod is authorized by upstream's RBAC against exactly that Role:
a permission missing from the Role fails this test. Deleting the scheduler pod lets upstream's
garbage collector (kube-controller-manager) delete the worker pods it owns.

Run against the kubeconfig ``python ci/upstream_k8s.py up`` wrote::

    python -m pytest -q tests/upstream --k8s-kubeconfig upstream.kubeconfig
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from distributed import Client
from kubernetes import client as k8s
from kubernetes import config as kube_config
from kubernetes import utils as kube_utils

from dask_k8s_backend import KubeSparkCluster, labels
from dask_k8s_backend.cluster.cluster_mode import OVERRIDES_ENV
from k8s_helpers import app_pods, wait_until

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
RBAC_YAML = ROOT / "deploy" / "rbac.yaml"


@pytest.fixture(scope="module")
def api_client(request) -> Iterator[k8s.ApiClient]:
    kubeconfig = request.config.getoption("--k8s-kubeconfig")
    if not kubeconfig:
        pytest.skip("needs a running upstream control plane: start `python ci/upstream_k8s.py up --kubeconfig F` "
                    "and pass --k8s-kubeconfig F")
    api = kube_config.new_client_from_config(config_file=kubeconfig)
    yield api
    api.close()


@pytest.fixture(scope="module")
def namespace(api_client) -> Iterator[str]:
    """A fresh namespace holding exactly deploy/rbac.yaml (its ServiceAccount, Role and RoleBinding)."""
    core = k8s.CoreV1Api(api_client)
    name = f"dask-rbac-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    try:
        for doc in yaml.safe_load_all(RBAC_YAML.read_text()):
            doc["metadata"]["namespace"] = name
            for subject in doc.get("subjects") or []:
                subject["namespace"] = name
            kube_utils.create_from_dict(api_client, doc, namespace=name)
        yield name
    finally:
        core.delete_namespace(name)


def service_account() -> str:
    """The ServiceAccount deploy/rbac.yaml binds its Role to."""
    account = next(d for d in yaml.safe_load_all(RBAC_YAML.read_text()) if d["kind"] == "ServiceAccount")
    return account["metadata"]["name"]


def cluster_kwargs(request, namespace: str) -> dict[str, Any]:
    return dict(
        master="k8s://", namespace=namespace, worker_memory="512MiB", quiet=True,
        authenticate={"kubeconfig": request.config.getoption("--k8s-kubeconfig")},
        executor={"delete-grace-period": "5s"},
        worker={"service-account": service_account(), "death-timeout": "20s"},
    )


def scheduler_overrides(pod: dict[str, Any]) -> dict[str, Any]:
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    return json.loads(env[OVERRIDES_ENV])


def test_cluster_mode_runs_with_the_rbac_yaml_role_only(request, api_client, namespace):
    core = k8s.CoreV1Api(api_client)
    kwargs = cluster_kwargs(request, namespace)
    cluster = KubeSparkCluster(name="cm-rbac", deploy_mode="cluster", shutdown_on_close=False, n_workers=2, **kwargs)
    app_id = cluster.app.app_id
    try:
        with Client(cluster) as client:
            client.wait_for_workers(2, timeout=120)
            assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6
        scheduler = core.read_namespaced_pod("cm-rbac-scheduler", namespace).to_dict()
        assert scheduler["spec"]["service_account_name"] == service_account()
        raw = json.loads(core.read_namespaced_pod("cm-rbac-scheduler", namespace, _preload_content=False).data)
        overrides = scheduler_overrides(raw)
        assert overrides["master"] == "k8s://"  # in-cluster configuration: the pod's own token
        assert not any(key.startswith("authenticate.") for key in overrides)  # never the user's kubeconfig
    finally:
        cluster.close()  # disconnects only

    assert len(app_pods(core, app_id, namespace)) == 3  # scheduler and two workers run on without us
    again = KubeSparkCluster.from_name("cm-rbac", **kwargs)
    assert again.app.app_id == app_id
    with Client(again) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        assert client.submit(lambda x: x * 2, 21).result(timeout=60) == 42
    again.close()
    wait_until(lambda: app_pods(core, app_id, namespace) == [], timeout=60, what="every pod of the app deleted")


def test_deleting_the_scheduler_pod_lets_the_garbage_collector_delete_the_workers(request, api_client, namespace):
    core = k8s.CoreV1Api(api_client)
    cluster = KubeSparkCluster(name="cm-gc", deploy_mode="cluster", shutdown_on_close=False, n_workers=2,
                               **cluster_kwargs(request, namespace))
    app_id = cluster.app.app_id
    cluster.wait_for_workers(2, timeout=120)
    cluster.close()
    workers = [p for p in app_pods(core, app_id, namespace) if p["metadata"]["labels"][labels.ROLE] == labels.ROLE_WORKER]
    assert len(workers) == 2
    core.delete_namespaced_pod("cm-gc-scheduler", namespace)
    # The workers' --death-timeout (20 s) would end their processes, not delete their pods: only
    # kube-controller-manager's garbage collector, following the ownerReferences, deletes them.
    wait_until(lambda: app_pods(core, app_id, namespace) == [], timeout=60, what="workers garbage-collected")
