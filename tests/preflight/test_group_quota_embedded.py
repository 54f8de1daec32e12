"""Worker groups get the default group's LimitRange / ResourceQuota checks (embedded, or upstream with --k8s-kubeconfig).

``add_worker_group`` refuses a group no pod of which the namespace would ever admit (one error
naming the group, the option, its value and the fix; nothing created, group not added), and
``scale(n, group=...)`` / ``adapt(maximum=..., group=...)`` warn when that many pods of the group
do not fit the quota next to what the other groups already use. Pods only need to exist to count
against a quota, so simulated kubelets are enough (on upstream, pods asking for a GPU no node has stay
Pending and count all the same).
"""

from __future__ import annotations

import logging

import pytest

from dask_k8s_backend import KubeSparkCluster
from dask_k8s_backend.cluster.preflight import QuotaError

from k8s_helpers import list_pods, wait_until

from .servers import api_server, create_quota

pytestmark = pytest.mark.timeout(120)

GPU = "example.com/gpu"


@pytest.fixture(scope="module")
def kube(request):
    specs = [{"name": "cpu-node"}, {"name": "gpu-node", "extended_resources": {GPU: "4"}}]
    with api_server(request, {}, kubelet="simulated", nodes=2, cpu="16", memory="32Gi", node_specs=specs) as server:
        yield server


@pytest.fixture
def namespace(kube, core_api, request):
    name = f"{kube.namespace}-g-{request.node.name.replace('_', '-')}"[:50].strip("-").lower()
    kube.create_namespace(core_api, name)
    yield name
    kube.delete_namespace(core_api, name)


@pytest.fixture
def cluster(kube, namespace):
    """A client-mode cluster (pods of 1 cpu and 640Mi: 256MiB + the 384MiB minimum overhead)."""
    with KubeSparkCluster(master=f"k8s://{kube.url}", namespace=namespace, worker_memory="256MiB", worker_cores=1,
                          quiet=True, authenticate={"kubeconfig": kube.kubeconfig},
                          executor={"delete-grace-period": "1s"}) as c:
        yield c


def pods(core_api, namespace):
    return list_pods(core_api, "dask-k8s-backend/role=worker", namespace)


def used_pods(core_api, namespace, name="compute"):
    used = core_api.read_namespaced_resource_quota(name, namespace).status.used or {}
    return int(used.get("pods", "0"))


def preflight_warnings(caplog):
    """The preflight's warnings only (the allocator may log its own quota refusals meanwhile)."""
    return [r for r in caplog.records if r.name == "dask_k8s_backend.cluster.preflight" and r.levelno >= logging.WARNING]


def assert_group_not_added(cluster, name):
    with pytest.raises(Exception, match=f"worker group '{name}' does not exist"):
        cluster.scale(1, group=name)
    assert f"worker group {name!r} added" not in cluster.refresh_status().events


def test_a_group_over_the_limit_range_is_refused_naming_the_option_and_nothing_is_created(cluster, core_api, namespace):
    core_api.create_namespaced_limit_range(namespace, {"metadata": {"name": "max"}, "spec": {"limits": [
        {"type": "Container", "max": {"memory": "2Gi"}}]}})
    with pytest.raises(QuotaError) as info:
        cluster.add_worker_group("big", worker_memory="4GiB", worker_cores=1)
    message = str(info.value)
    assert message.startswith("add_worker_group('big'): the policies of namespace")
    assert "worker_memory='4GiB' makes the pod ask limits.memory=4506Mi,requests.memory=4506Mi" in message
    assert "maximum memory usage per Container is 2Gi, but limit is 4506Mi" in message
    assert "nothing was created and the group was not added" in message
    assert "Fix: call add_worker_group('big', ...) with smaller worker_memory so one pod fits" in message
    assert_group_not_added(cluster, "big")
    assert pods(core_api, namespace) == []
    cluster.add_worker_group("fits", worker_memory="1GiB", worker_cores=1)  # 1GiB + 384MiB overhead <= 2Gi: accepted
    assert "worker group 'fits' added" in cluster.refresh_status().events


def test_an_extended_resource_larger_than_the_quota_is_refused_naming_resources(cluster, core_api, namespace):
    create_quota(core_api, namespace, {f"requests.{GPU}": "1"}, name="gpus")
    with pytest.raises(QuotaError) as info:
        cluster.add_worker_group("gpu", resources={"GPU": 2, GPU: 2})
    message = str(info.value)
    assert f"resources={{'{GPU}': 2.0}} makes the pod ask limits.{GPU}=2,requests.{GPU}=2" in message, message
    assert f"ResourceQuota 'gpus': each worker pod requests requests.{GPU}=2, used: requests.{GPU}=0, limited: requests.{GPU}=1" in message
    assert "with smaller resources so one pod fits" in message
    assert_group_not_added(cluster, "gpu")
    assert pods(core_api, namespace) == []


def test_a_quota_requirement_the_group_leaves_unset_is_refused(cluster, core_api, namespace):
    create_quota(core_api, namespace, {"limits.cpu": "8"})
    with pytest.raises(QuotaError, match=r"add_worker_group\('nolimit'\).*requires every container to set limits.cpu"):
        cluster.add_worker_group("nolimit", worker_cores=1)
    assert_group_not_added(cluster, "nolimit")


def test_scaling_a_group_warns_when_the_other_groups_already_use_the_quota(cluster, core_api, namespace, caplog):
    create_quota(core_api, namespace, {"pods": "3", "requests.cpu": "10"})
    cluster.add_worker_group("small", worker_cores=1)  # a quota that is merely full now is no reason to refuse a group
    cluster.scale(2)
    wait_until(lambda: used_pods(core_api, namespace) == 2, timeout=30, what="the quota to count 2 default pods")
    with caplog.at_level(logging.WARNING, logger="dask_k8s_backend.cluster.preflight"):
        cluster.scale(1, group="small")  # 2 + 1 = 3 pods: fits, no warning
        assert not preflight_warnings(caplog), caplog.text
        wait_until(lambda: used_pods(core_api, namespace) == 3, timeout=30, what="the quota to count 3 pods")
        wait_until(lambda: any(e.get("group") == "small" for e in cluster.refresh_status().alive()), timeout=30,
                   what="the backend to see the small group's pod")
        cluster.scale(3, group="small")
    [record] = preflight_warnings(caplog)
    assert ("scale(3, group='small') needs 2 more worker pods, but only 0 fit: ResourceQuota 'compute': each worker "
            "pod requests pods=1, used: pods=3, limited: pods=3") in record.getMessage()
    assert "lower the worker_cores / worker_memory / resources of worker group 'small'" in record.getMessage()
    assert any("scale(3, group='small') needs 2 more" in str(entry) for entry in cluster._cluster_manager_logs)


def test_adapt_maximum_of_a_group_warns_when_it_cannot_fit(cluster, core_api, namespace, caplog):
    create_quota(core_api, namespace, {f"requests.{GPU}": "3"}, name="gpus")
    cluster.add_worker_group("gpu", resources={"GPU": 1, GPU: 1})
    with caplog.at_level(logging.WARNING, logger="dask_k8s_backend.cluster.preflight"):
        cluster.adapt(minimum=0, maximum=3, group="gpu")  # 3 x 1 GPU: fits
        assert not preflight_warnings(caplog), caplog.text
        cluster.adapt(minimum=0, maximum=5, group="gpu")
    [record] = preflight_warnings(caplog)
    assert (f"adapt(maximum=5, group='gpu') may need 5 more worker pods, but only 3 fit: ResourceQuota 'gpus': each "
            f"worker pod requests requests.{GPU}=1") in record.getMessage()
    assert pods(core_api, namespace) == []  # a warning, and adapt created nothing on its own (no demand)


def test_adapt_of_an_asynchronous_cluster_warns_once_the_quota_is_read(kube, namespace, core_api, caplog):
    import asyncio

    create_quota(core_api, namespace, {f"requests.{GPU}": "1"}, name="gpus")

    async def main() -> list[logging.LogRecord]:
        async with KubeSparkCluster(master=f"k8s://{kube.url}", namespace=namespace, worker_memory="256MiB",
                                    worker_cores=1, quiet=True, asynchronous=True,
                                    authenticate={"kubeconfig": kube.kubeconfig}) as cluster:
            await cluster.add_worker_group("gpu", resources={"GPU": 1, GPU: 1})
            cluster.adapt(minimum=0, maximum=2, group="gpu")  # returns at once: the check runs on the loop
            deadline = asyncio.get_running_loop().time() + 30
            while not preflight_warnings(caplog) and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            return preflight_warnings(caplog)

    with caplog.at_level(logging.WARNING, logger="dask_k8s_backend.cluster.preflight"):
        [record] = asyncio.run(main())
    assert "adapt(maximum=2, group='gpu') may need 2 more worker pods, but only 1 fit" in record.getMessage()
