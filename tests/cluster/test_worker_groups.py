"""Worker groups on the embedded Kubernetes: a cpu node and a tainted "gpu" node with an extended resource."""

from __future__ import annotations

import pytest
from distributed import Client, get_worker

import dask
from dask_k8s_backend import KubeSparkCluster

from k8s_helpers import app_pods, wait_until

from .conftest import cluster_kwargs

pytestmark = pytest.mark.timeout(240)

GPU_TOLERATION = {"key": "accelerator", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
GPU_GROUP = dict(
    worker_cores=1,
    worker_memory="512MiB",
    resources={"GPU": 1, "example.com/gpu": 1},
    node_selector={"accelerator": "gpu"},
    tolerations=[GPU_TOLERATION],
)


@pytest.fixture(scope="module")
def kube():
    from dask_k8s_backend.embedded.cluster import EmbeddedKubernetes

    nodes = [
        {"name": "cpu-node", "cpu": "8", "memory": "16Gi"},
        {
            "name": "gpu-node",
            "cpu": "8",
            "memory": "16Gi",
            "labels": {"accelerator": "gpu"},
            "taints": [{"key": "accelerator", "value": "gpu", "effect": "NoSchedule"}],
            "extended_resources": {"example.com/gpu": "2"},
        },
    ]
    with EmbeddedKubernetes(kubelet="process", node_specs=nodes) as k:
        yield k


def group_of(pod: dict) -> str:
    return pod["metadata"]["labels"]["dask-k8s-backend/group"]


def running_by_group(core_api, app_id: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for pod in app_pods(core_api, app_id):
        if pod.get("status", {}).get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp"):
            out.setdefault(group_of(pod), []).append(pod)
    return out


def test_groups_scale_independently_and_land_on_their_nodes(kube, core_api):
    with KubeSparkCluster(**cluster_kwargs(kube)) as cluster, Client(cluster) as client:
        cluster.add_worker_group("gpu", **GPU_GROUP)
        cluster.scale(1)
        cluster.scale(2, group="gpu")
        client.wait_for_workers(3, timeout=120)
        pods = running_by_group(core_api, cluster.app.app_id)
        assert len(pods["default"]) == 1 and len(pods["gpu"]) == 2
        assert {p["spec"]["nodeName"] for p in pods["gpu"]} == {"gpu-node"}
        assert {p["spec"]["nodeName"] for p in pods["default"]} == {"cpu-node"}

        cluster.scale(1, group="gpu")
        wait_until(lambda: len(client.scheduler_info()["workers"]) == 2, what="gpu group down to 1")
        pods = running_by_group(core_api, cluster.app.app_id)
        assert len(pods["default"]) == 1  # the default group was not touched


def test_annotated_tasks_run_only_on_the_right_group(kube):
    with KubeSparkCluster(n_workers=1, **cluster_kwargs(kube)) as cluster, Client(cluster) as client:
        cluster.add_worker_group("gpu", **GPU_GROUP)
        cluster.scale(1, group="gpu")
        client.wait_for_workers(2, timeout=120)
        gpu_names = {e["id"] for e in cluster.refresh_status().group_executors("gpu")}

        def where(_):
            return int(get_worker().name)

        with dask.annotate(resources={"GPU": 1}):
            futures = client.map(where, range(10))
        assert set(client.gather(futures)) <= {int(i) for i in gpu_names}


def test_adapt_per_group_follows_demand_for_its_resources(kube):
    with KubeSparkCluster(**cluster_kwargs(kube)) as cluster, Client(cluster) as client:
        cluster.add_worker_group("gpu", **GPU_GROUP)
        cluster.adapt(minimum=0, maximum=2, group="gpu", interval="200ms", wait_count=2, scale_down_window="1s")

        def slow(x):
            import time

            time.sleep(0.3)
            return x

        futures = client.map(slow, range(8), resources={"GPU": 1})
        assert sorted(client.gather(futures)) == list(range(8))
        del futures
        status = cluster.refresh_status()
        assert status.group_executors("gpu") and not status.group_executors("default")
        wait_until(lambda: not client.scheduler_info()["workers"], timeout=90, what="gpu group adapts back to 0")


def test_a_broken_group_stops_alone_and_the_default_group_keeps_working(kube):
    kwargs = cluster_kwargs(kube, allocation={"pending-timeout": "2s"}, executor={"max-failures": 2})
    broken_template = {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{"name": "w", "image": "example.com/invalid:1"}]}}
    with KubeSparkCluster(n_workers=1, **kwargs) as cluster, Client(cluster) as client:
        cluster.add_worker_group("broken", worker_cores=1, worker_memory="256MiB", pod_template=broken_template)
        cluster.scale(1, group="broken")
        wait_until(lambda: "broken" in cluster.refresh_status().errors, timeout=90, what="broken group blocked")
        assert "ErrImagePull" in cluster.refresh_status().errors["broken"] or "image" in cluster.refresh_status().errors["broken"]
        client.wait_for_workers(1, timeout=120)
        cluster.scale(2)
        client.wait_for_workers(2, timeout=120)
        assert client.submit(sum, [1, 2]).result(timeout=60) == 3


def test_over_asking_an_extended_resource_stays_unschedulable_with_the_real_message(kube):
    with KubeSparkCluster(**cluster_kwargs(kube)) as cluster:
        cluster.add_worker_group("greedy", worker_cores=1, worker_memory="256MiB", resources={"example.com/gpu": 3},
                                 node_selector={"accelerator": "gpu"}, tolerations=[GPU_TOLERATION])
        cluster.scale(1, group="greedy")
        reason = wait_until(lambda: cluster.refresh_status().pending_reasons.get("1"), timeout=60, what="pending reason")
        assert "Insufficient example.com/gpu" in reason


def test_bad_group_definitions_fail_before_any_pod(kube, core_api):
    with KubeSparkCluster(**cluster_kwargs(kube)) as cluster:
        with pytest.raises(ValueError, match="worker group name"):
            cluster.add_worker_group("GPU!", worker_cores=1)
        with pytest.raises(ValueError, match="memory"):
            cluster.add_worker_group("gpu", worker_memory="lots")
        with pytest.raises(Exception, match="does not exist"):
            cluster.scale(1, group="nope")
        assert app_pods(core_api, cluster.app.app_id) == []
