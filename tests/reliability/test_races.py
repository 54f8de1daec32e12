"""Unschedulable requests, and racing operations: close during scale-up, scale while closing,
adapt together with manual scale, two clusters of the same name in one namespace."""

from __future__ import annotations

import threading
import time

import pytest
from distributed import Client

from dask_k8s_backend import KubeSparkCluster, labels
from dask_k8s_backend.cluster.waiting import WorkersNotReadyError

from .scenarios import app_pods, at_target, cluster_kwargs, live_pods, registered_ids, wait_until

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(120)]


def test_unschedulable_request_is_shown_and_wait_for_workers_fails_with_the_schedulers_message(kube):
    with KubeSparkCluster(**cluster_kwargs(kube, worker_cores=64)) as cluster, Client(cluster) as client:
        cluster.scale(1)
        with pytest.raises(WorkersNotReadyError, match="Insufficient cpu") as info:
            client.wait_for_workers(1, timeout=5)
        assert "0/2 nodes are available" in str(info.value)
        assert "Insufficient cpu" in cluster.status_table
        assert "Insufficient cpu" in cluster._repr_html_()
        app_id = cluster.app.app_id
    assert app_pods(kube, app_id) == []


def test_close_during_scale_up_leaves_no_pod(kube, creations):
    cluster = KubeSparkCluster(**cluster_kwargs(kube))
    cluster.scale(6)
    wait_until(lambda: creations.for_app(cluster.app.app_id), timeout=30, what="the first pod")
    cluster.close()
    assert cluster.pods_left_after_close == 0
    assert app_pods(kube, cluster.app.app_id) == []


def test_scale_while_closing_creates_nothing_after_close(kube, creations):
    cluster = KubeSparkCluster(**cluster_kwargs(kube, n_workers=2))
    wait_until(lambda: at_target(kube, cluster, 2), timeout=60, what="2 workers")
    errors: list[BaseException] = []

    def scale_repeatedly() -> None:
        for n in (5, 1, 4, 0, 3):
            try:
                cluster.scale(n)
            except Exception as e:  # refused once the backend is closing: that is the point
                errors.append(e)

    scaler = threading.Thread(target=scale_repeatedly)
    scaler.start()
    cluster.close()
    scaler.join(timeout=60)
    assert not scaler.is_alive()
    created = len(creations.for_app(cluster.app.app_id))
    assert app_pods(kube, cluster.app.app_id) == []
    time.sleep(1)  # no event says "nothing more happens": give a stray creation time to show itself
    assert len(creations.for_app(cluster.app.app_id)) == created and app_pods(kube, cluster.app.app_id) == []


def test_adapt_and_manual_scale_together_converge_without_leaks(kube, creations):
    with KubeSparkCluster(**cluster_kwargs(kube)) as cluster, Client(cluster):
        cluster.adapt(minimum=1, maximum=3, interval="200ms", wait_count=2)
        wait_until(lambda: live_pods(kube, cluster.app.app_id), timeout=60, what="adapt's minimum")
        cluster.scale(3)  # a manual scale while adapt runs: adapt is the one that decides in the end
        wait_until(lambda: len(registered_ids(cluster)) == 1 and len(live_pods(kube, cluster.app.app_id)) == 1,
                   timeout=60, what="adapt to scale an idle cluster back to its minimum")
        ids = creations.for_app(cluster.app.app_id)
        assert len(ids) == len(set(ids))
        app_id = cluster.app.app_id
    assert app_pods(kube, app_id) == []


def test_two_clusters_with_the_same_name_never_touch_each_others_pods(kube):
    kwargs = cluster_kwargs(kube, name="twin")
    with KubeSparkCluster(**kwargs) as first, KubeSparkCluster(**kwargs) as second:
        assert first.app.app_id != second.app.app_id
        first.scale(2)
        second.scale(1)
        wait_until(lambda: at_target(kube, first, 2) and at_target(kube, second, 1), timeout=60, what="both clusters")
        second_pods = {p["metadata"]["uid"] for p in app_pods(kube, second.app.app_id)}
        first.scale(0)
        wait_until(lambda: not live_pods(kube, first.app.app_id), timeout=60, what="first cluster scaled to 0")
        first.close()
        assert {p["metadata"]["uid"] for p in live_pods(kube, second.app.app_id)} == second_pods
        assert at_target(kube, second, 1)
        names = {p["metadata"]["name"] for p in app_pods(kube, second.app.app_id)}
        assert all(p["metadata"]["labels"][labels.APP_ID] == second.app.app_id for p in app_pods(kube, second.app.app_id))
        assert len(names) == 1
    assert app_pods(kube, first.app.app_id) == app_pods(kube, second.app.app_id) == []
