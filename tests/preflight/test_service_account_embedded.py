"""Cluster mode: the scheduler pod's service account must exist and may do what the backend in it does.

Checked before anything is created: the account is read through the API, and what it may do is
asked with SubjectAccessReviews for ``system:serviceaccount:<ns>:<name>``, answered on the embedded
Kubernetes from the rules registered for that user name, and with ``--k8s-kubeconfig`` by upstream's
RBAC for ServiceAccounts bound to Roles made for the test (servers.py). A client that may not
create SubjectAccessReviews gets a warning, not an error.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from kubernetes import config
from kubernetes.client import CoreV1Api

from dask_k8s_backend import KubeSparkCluster
from dask_k8s_backend.cluster.cluster_mode import scheduler_service_account
from dask_k8s_backend.config import load_settings
from dask_k8s_backend.cluster.preflight import MissingPermissionsError, ServiceAccountError, run_preflight
from dask_k8s_backend.cluster.preflight_access import (
    CLIENT_MODE_PERMISSIONS, CLUSTER_MODE_PERMISSIONS, IN_POD_PERMISSIONS, OPTIONAL_PERMISSIONS, POD_LOGS,
)

from k8s_helpers import list_pods

from .conftest import rbac_yaml_rules, rule
from .servers import api_server

pytestmark = pytest.mark.timeout(60)

NS = "default"  # the embedded server's; rules with a namespace apply in the test's namespace on upstream
SERVICE_ACCOUNTS = ("dask-sa", "weak", "no-logs")


def rules(permissions) -> list[dict]:
    return [rule(p, NS) for p in permissions]


USERS = {
    "dask-sa": rbac_yaml_rules(NS),        # deploy/rbac.yaml bound to it
    "weak": rules([p for p in IN_POD_PERMISSIONS if (p.verb, p.resource) != ("delete", "pods")]),
    "no-logs": rules(IN_POD_PERMISSIONS),  # every required one, no pods/log
    # a notebook identity without pods/log: in cluster mode the scheduler pod's account reads the logs
    "notebook-no-logs": rules(CLIENT_MODE_PERMISSIONS + CLUSTER_MODE_PERMISSIONS
                              + tuple(p for p in OPTIONAL_PERMISSIONS if p != POD_LOGS))
    + [{"resources": ["serviceaccounts"], "verbs": ["get"], "namespaces": [NS]},
       {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]}],
    # a notebook identity with every cluster-mode permission, but not that of asking about others
    "notebook": rules(CLIENT_MODE_PERMISSIONS + CLUSTER_MODE_PERMISSIONS + OPTIONAL_PERMISSIONS)
    + [{"resources": ["serviceaccounts"], "verbs": ["get"], "namespaces": [NS]}],
}


@pytest.fixture(scope="module")
def kube(request):
    with api_server(request, USERS, service_accounts=SERVICE_ACCOUNTS, kubelet="simulated", nodes=1) as server:
        yield server


def preflight(client, **kwargs) -> None:
    asyncio.run(run_preflight(client, **kwargs))


def api_client(kubeconfig: str):
    return config.new_client_from_config(config_file=kubeconfig)


def all_pods(kube) -> list[dict]:
    client = api_client(kube.kubeconfig)
    try:
        return list_pods(CoreV1Api(client), "", kube.namespace)
    finally:
        client.close()


def cluster_mode(kube, **extra):
    return KubeSparkCluster(master=f"k8s://{kube.url}", namespace=kube.namespace, deploy_mode="cluster", quiet=True,
                            worker_memory="256MiB", authenticate={"kubeconfig": kube.kubeconfig}, **extra)


def test_a_missing_service_account_is_refused_before_the_scheduler_pod_exists(kube):
    with pytest.raises(ServiceAccountError) as info:
        cluster_mode(kube, service_account="ghost")
    message = str(info.value)
    assert "service account 'ghost' (k8s-backend.worker.service-account" in message
    assert f"does not exist in namespace {kube.namespace!r}; nothing was created" in message
    assert f"kubectl create serviceaccount ghost -n {kube.namespace}" in message
    assert "or set k8s-backend.worker.service-account to an existing service account" in message
    assert all_pods(kube) == []


def test_a_service_account_lacking_a_permission_is_refused_naming_it_and_the_binding(kube):
    with pytest.raises(MissingPermissionsError) as info:
        cluster_mode(kube, service_account="weak")
    message = str(info.value)
    assert [p.describe() for p in info.value.missing] == [
        "delete pods (scale down and replace workers)"]
    assert "service account 'weak' (k8s-backend.worker.service-account), which lacks 1 permission(s)" in message
    assert "kind: RoleBinding" in message
    assert f"  - kind: ServiceAccount\n    name: weak\n    namespace: {kube.namespace}" in message
    assert 'resources: ["pods"]\n    verbs: ["delete"]' in message
    assert all_pods(kube) == []


@pytest.mark.parametrize("name, missing", [
    ("dask-sa", []),                                      # deploy/rbac.yaml's Role is enough in the pod
    ("nobody-bound", [p.describe() for p in IN_POD_PERMISSIONS]),  # no rules at all: everything is missing
])
def test_the_in_pod_permissions_are_asked_for_the_named_account(kube, name, missing):
    client = api_client(kube.kubeconfig)
    try:
        if name == "nobody-bound":
            CoreV1Api(client).create_namespaced_service_account(kube.namespace, {"metadata": {"name": name}})
        if not missing:
            preflight(client, namespace=kube.namespace, deploy_mode="cluster", pod={}, n_workers=0, service_account=name)
            return
        with pytest.raises(MissingPermissionsError) as info:
            preflight(client, namespace=kube.namespace, deploy_mode="cluster", pod={}, n_workers=0, service_account=name)
        assert [p.describe() for p in info.value.missing] == missing
    finally:
        client.close()


def test_a_client_that_may_not_create_subjectaccessreviews_gets_a_warning_not_an_error(kube, caplog):
    client = api_client(kube.kubeconfig_for("notebook"))
    try:
        with caplog.at_level(logging.WARNING, logger="dask_k8s_backend.cluster.preflight"):
            # "weak" lacks a permission, but this identity may not ask: the pod's own refusals will tell
            preflight(client, namespace=kube.namespace, deploy_mode="cluster", pod={}, n_workers=0, service_account="weak")
        with pytest.raises(ServiceAccountError):  # reading the account still works: a missing one is still an error
            preflight(client, namespace=kube.namespace, deploy_mode="cluster", pod={}, n_workers=0,
                      service_account="ghost")
    finally:
        client.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == "dask_k8s_backend.cluster.preflight"]
    assert warnings == ["preflight: cannot ask what service account 'weak' may do (403: creating subjectaccessreviews "
                        "needs that permission); not checking the scheduler pod's permissions"]


def test_which_service_account_is_checked(kube):
    from dask_k8s_backend.kube.master import KubeConnection

    class Configuration:
        host = "https://k8s.example.com:443"

    class ApiClient:
        configuration = Configuration()

    remote = KubeConnection(api_client=ApiClient(), master="k8s://https://k8s.example.com:443", embedded=None,
                            scheduler_host=None, kubeconfig=None)
    cluster = load_settings({"deploy-mode": "cluster"})
    named = load_settings({"deploy-mode": "cluster", "worker.service-account": "dask-sa"})
    assert scheduler_service_account(load_settings({"worker.service-account": "dask-sa"}), remote) is None  # client mode
    assert scheduler_service_account(named, remote) == "dask-sa"
    assert scheduler_service_account(cluster, remote) == "default"  # the pod runs with the namespace's default token
    local = KubeConnection(api_client=api_client(kube.kubeconfig), master=f"k8s://{kube.url}", embedded=None,
                           scheduler_host=None, kubeconfig=kube.kubeconfig)
    try:
        # the embedded server's pod process uses the kubeconfig; upstream projects the namespace default's token
        assert scheduler_service_account(cluster, local) == (None if kube.kind == "embedded" else "default")
        assert scheduler_service_account(named, local) == "dask-sa"
    finally:
        local.api_client.close()


@pytest.mark.parametrize("identity, account, warned", [
    ("notebook-no-logs", "dask-sa", None),      # the notebook's pods/log does not matter: the pod reads the logs
    ("admin", "no-logs", "service account 'no-logs'"),  # the pod's account lacks it: one warning, naming the account
])
def test_pods_log_is_optional_and_asked_of_whoever_reads_the_logs(kube, caplog, identity, account, warned):
    client = api_client(kube.kubeconfig if identity == "admin" else kube.kubeconfig_for(identity))
    try:
        with caplog.at_level(logging.WARNING, logger="dask_k8s_backend.cluster.preflight"):
            missing = asyncio.run(run_preflight(client, namespace=kube.namespace, deploy_mode="cluster", pod={},
                                                n_workers=0, service_account=account))
    finally:
        client.close()
    shown = [r.getMessage() for r in caplog.records if r.name == "dask_k8s_backend.cluster.preflight"]
    if warned is None:
        assert missing == () and shown == []
    else:
        assert missing == (POD_LOGS,) and len(shown) == 1
        assert warned in shown[0] and "  - get pods/log" in shown[0]
