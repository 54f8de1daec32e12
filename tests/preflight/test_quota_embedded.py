"""ResourceQuota and LimitRange: refused up front, and at creation time.

On the embedded Kubernetes, or with ``--k8s-kubeconfig`` on upstream's, where the quota and
LimitRange admission plugins and kube-controller-manager's quota controller give the answers.
"""

from __future__ import annotations

import pytest

from dask_k8s_backend import KubeSparkCluster
from dask_k8s_backend.cluster.preflight import QuotaError

from k8s_helpers import wait_until

from .conftest import cluster_kwargs, worker_pods
from .servers import create_quota

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def namespace(kube, core_api, request):
    """A fresh namespace for one test, deleted afterwards."""
    name = f"{kube.namespace}-{request.node.name.replace('_', '-')}"[:50].strip("-").lower()
    kube.create_namespace(core_api, name)
    yield name
    kube.delete_namespace(core_api, name)


def test_workers_that_cannot_fit_the_quota_are_refused_up_front_with_its_numbers(kube, core_api, namespace):
    create_quota(core_api, namespace, {"requests.cpu": "2", "pods": "10"})
    with pytest.raises(QuotaError) as info:
        KubeSparkCluster(n_workers=3, **cluster_kwargs(kube, namespace=namespace))
    message = str(info.value)
    assert "n_workers=3 asks for 3 worker pods, but only 2 fit" in message
    assert "ResourceQuota 'compute': each worker pod requests requests.cpu=1, used: requests.cpu=0, limited: requests.cpu=2" in message
    assert "nothing was created" in message
    assert worker_pods(core_api, namespace) == []


def test_a_quota_on_limits_needs_them_set_and_limit_range_defaults_count(kube, core_api, namespace):
    create_quota(core_api, namespace, {"limits.cpu": "3"})
    with pytest.raises(QuotaError, match="requires every container to set limits.cpu for: "):
        KubeSparkCluster(n_workers=1, **cluster_kwargs(kube, namespace=namespace))
    core_api.create_namespaced_limit_range(namespace, {"metadata": {"name": "defaults"}, "spec": {"limits": [
        {"type": "Container", "default": {"cpu": "2"}}]}})
    with pytest.raises(QuotaError, match=r"limits.cpu=2, used: limits.cpu=0, limited: limits.cpu=3"):
        KubeSparkCluster(n_workers=2, **cluster_kwargs(kube, namespace=namespace))  # 2 x the default 2 > 3
    assert worker_pods(core_api, namespace) == []
    with KubeSparkCluster(n_workers=1, **cluster_kwargs(kube, namespace=namespace)) as cluster:
        pods = wait_until(lambda: worker_pods(core_api, namespace), what="the worker pod")
        resources = pods[0]["spec"]["containers"][0]["resources"]
        assert resources["limits"]["cpu"] == "2"  # the API server applied the LimitRange default
        quota = core_api.read_namespaced_resource_quota("compute", namespace)
        wait_until(lambda: core_api.read_namespaced_resource_quota("compute", namespace).status.used == {"limits.cpu": "2"},
                   what="the quota's status.used")
        assert quota.status.hard == {"limits.cpu": "3"}
        cluster.wait_for_workers(1, timeout=60)


def test_a_full_quota_at_creation_time_is_reported_and_retried_when_capacity_frees(kube, core_api, namespace):
    create_quota(core_api, namespace, {"pods": "2"})
    blocker = {"metadata": {"name": "blocker"},  # no node has the label: Pending forever on any server
               "spec": {"nodeSelector": {"example.com/nowhere": "true"}, "containers": [{"name": "c", "image": "pause"}]}}
    core_api.create_namespaced_pod(namespace, blocker)  # another app's pod, Pending, counts
    wait_until(lambda: (core_api.read_namespaced_resource_quota("compute", namespace).status.used or {}).get("pods") == "1",
               what="the quota controller to count the blocker")
    with KubeSparkCluster(**cluster_kwargs(kube, namespace=namespace)) as cluster:
        cluster.scale(3)
        cluster_log = str(cluster.get_logs(scheduler=False, workers=False)["Cluster"])
        assert ("scale(3) needs 3 more worker pods, but only 1 fit: ResourceQuota 'compute': each worker pod requests "
                "pods=1, used: pods=1, limited: pods=2") in cluster_log
        expected = 'exceeded quota: compute, requested: pods=1, used: pods=2, limited: pods=2'
        wait_until(lambda: any(expected in e for e in cluster.refresh_status().events), what="the quota refusal in status")
        assert len(worker_pods(core_api, namespace)) == 1
        allocator = cluster.scheduler.plugins["k8s-backend"].components.allocator
        refusals = allocator.quota_refusals
        assert sum(expected in e for e in cluster.refresh_status().events) == 1  # reported once
        core_api.delete_namespaced_pod("blocker", namespace, grace_period_seconds=0)
        wait_until(lambda: len(worker_pods(core_api, namespace)) == 2, timeout=30, what="a second worker pod")
        assert allocator.quota_refusals - refusals <= 8, "a full quota must not be hammered"
    assert worker_pods(core_api, namespace) == []
