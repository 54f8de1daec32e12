"""Calm autoscaling beside the scheduler (issue 17), on the embedded Kubernetes.

Four bursts of 24 one-second tasks with 3 s idle gaps under adapt(maximum=6) must not create a new
set of pods per burst (issue 17 saw 10 with 2 s gaps and 15 with 4 s gaps); and an idle cluster
still comes down to its minimum once the window has passed.
"""

from __future__ import annotations

import time

import pytest
from distributed import Client

from dask_k8s_backend import KubeSparkCluster, labels

from k8s_helpers import app_pods, wait_until

from .conftest import cluster_kwargs

pytestmark = pytest.mark.timeout(240)

GAP = 3  # seconds of idleness between bursts: the scenario itself, not a wait for an event


def run_burst(client: Client, tag: int) -> None:
    """24 one-second tasks (time.sleep: importable on every worker, unlike a function of this module)."""
    futures = client.map(time.sleep, [1] * 24, key=[f"burst-{tag}-{i}" for i in range(24)])
    assert client.gather(futures) == [None] * 24
    del futures  # nothing held: the workers are idle and empty


def live_executors(cluster: KubeSparkCluster) -> int:
    return len(cluster.refresh_status().alive())


def test_bursts_with_short_idle_gaps_reuse_their_workers(kube):
    with KubeSparkCluster(**cluster_kwargs(kube)) as cluster, Client(cluster) as client:
        cluster.adapt(minimum=0, maximum=6)  # the default window: 30 s
        for burst in range(4):
            run_burst(client, burst)
            time.sleep(GAP)
        status = cluster.refresh_status()
        print(f"pods created over four bursts: {status.pods_created}")
        assert status.pods_created <= 7, status.events
        assert "scale-down window 30 s" in status.adaptive["default"]


def test_an_idle_cluster_reaches_its_minimum_within_window_and_wait(kube):
    window, interval, wait_count = 2.0, 0.5, 3
    with KubeSparkCluster(**cluster_kwargs(kube)) as cluster, Client(cluster) as client:
        cluster.adapt(minimum=1, maximum=4, scale_down_window=f"{window}s", interval=f"{interval}s",
                      wait_count=wait_count)
        client.wait_for_workers(1, timeout=60)
        run_burst(client, 0)
        assert live_executors(cluster) > 1
        # window + wait_count decisions, plus retiring the workers and deleting their pods (that the window
        # holds the target up is the rule tests' job: the load's recommendation falls before gather returns)
        wait_until(lambda: live_executors(cluster) == 1 and len(client.scheduler_info()["workers"]) == 1,
                   timeout=window + wait_count * interval + 10, what="the minimum of 1 worker")
        assert "adaptive 1–4" in cluster._repr_html_()


def test_adapt_options_are_checked_before_the_scheduler_is_asked(kube):
    with KubeSparkCluster(**cluster_kwargs(kube)) as cluster:
        with pytest.raises(ValueError, match=r"adapt\(scale_down_window=\.\.\.\): cannot parse 'soon' as a duration"):
            cluster.adapt(maximum=3, scale_down_window="soon")
        with pytest.raises(ValueError, match=r"adapt\(wait_count=0\): expected a whole number >= 1"):
            cluster.adapt(maximum=3, wait_count=0)
        assert cluster.refresh_status().adaptive == {}
        handle = cluster.adapt(maximum=3, scale_down_window=5)
        assert "scale-down window 5 s" in cluster.refresh_status().adaptive["default"]
        handle.stop()
        assert cluster.refresh_status().adaptive == {}


def live_worker_pods(core_api, app_id: str) -> list[dict]:
    return [p for p in app_pods(core_api, app_id)
            if p["metadata"]["labels"].get(labels.ROLE) == labels.ROLE_WORKER
            and p["status"].get("phase") in ("Pending", "Running") and not p["metadata"].get("deletionTimestamp")]


def test_in_cluster_mode_adapt_keeps_scaling_with_no_client_connected(kube, core_api):
    kwargs = cluster_kwargs(kube)
    cluster = KubeSparkCluster(name="calm-cm", deploy_mode="cluster", shutdown_on_close=False, **kwargs)
    app_id = cluster.app.app_id
    try:
        cluster.adapt(minimum=0, maximum=2, scale_down_window="8s", interval="500ms", wait_count=2)
        with Client(cluster) as client:
            run_burst(client, 0)
    finally:
        cluster.close()  # disconnects only: the scheduler pod and its adaptive loop keep running
    assert live_worker_pods(core_api, app_id), "the burst's workers should still be inside the window"
    wait_until(lambda: not live_worker_pods(core_api, app_id), timeout=60,
               what="the scheduler's adaptive loop to scale down with no client connected")
    KubeSparkCluster.from_name("calm-cm", **kwargs).close()
    wait_until(lambda: app_pods(core_api, app_id) == [], timeout=60, what="the cluster to be gone")
