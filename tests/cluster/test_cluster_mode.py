"""Cluster deploy mode end to end: the scheduler runs in its own pod and owns the worker pods."""

from __future__ import annotations

import pytest
from distributed import Client

from dask_k8s_backend import KubeSparkCluster
from dask_k8s_backend import labels

from k8s_helpers import app_pods, wait_until

from .conftest import cluster_kwargs

pytestmark = pytest.mark.timeout(300)


def test_create_compute_disconnect_reconnect_compute_close(kube, core_api):
    kwargs = cluster_kwargs(kube)
    cluster = KubeSparkCluster(name="cm-e2e", deploy_mode="cluster", shutdown_on_close=False, n_workers=2, **kwargs)
    app_id = cluster.app.app_id
    try:
        with Client(cluster) as client:
            client.wait_for_workers(2, timeout=120)
            assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6
        pods = app_pods(core_api, app_id)
        scheduler = [p for p in pods if p["metadata"]["labels"][labels.ROLE] == labels.ROLE_SCHEDULER]
        workers = [p for p in pods if p["metadata"]["labels"][labels.ROLE] == labels.ROLE_WORKER]
        assert len(scheduler) == 1 and len(workers) == 2
        owner = scheduler[0]["metadata"]["uid"]
        assert all(w["metadata"]["ownerReferences"][0]["uid"] == owner for w in workers)
        assert core_api.read_namespaced_service("cm-e2e-scheduler", "default").spec.ports[0].port == 8786
    finally:
        cluster.close()  # disconnects only: shutdown_on_close=False

    assert len(app_pods(core_api, app_id)) == 3  # still running without us

    again = KubeSparkCluster.from_name("cm-e2e", **kwargs)
    assert again.app.app_id == app_id
    with Client(again) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        assert client.submit(lambda x: x * 2, 21).result(timeout=60) == 42
    again.close()
    assert app_pods(core_api, app_id) == []


def test_deleting_the_scheduler_pod_garbage_collects_the_workers(kube, core_api):
    kwargs = cluster_kwargs(kube)
    cluster = KubeSparkCluster(name="cm-gc", deploy_mode="cluster", shutdown_on_close=False, n_workers=2, **kwargs)
    app_id = cluster.app.app_id
    cluster.wait_for_workers(2, timeout=120)
    cluster.close()
    core_api.delete_namespaced_pod("cm-gc-scheduler", "default")
    wait_until(lambda: app_pods(core_api, app_id) == [], timeout=90, what="workers garbage-collected")


def test_from_name_of_an_unknown_cluster_says_how_to_list_them(kube):
    with pytest.raises(ValueError, match="no running scheduler pod of a cluster named 'nope'.*status"):
        KubeSparkCluster.from_name("nope", **cluster_kwargs(kube))
