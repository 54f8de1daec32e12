"""The scheduler's /metrics reports the backend's executors, pods and API requests (issue 17)."""

from __future__ import annotations

import urllib.request
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dask_k8s_backend import KubeSparkCluster, labels

from k8s_helpers import app_pods, wait_until

from .conftest import cluster_kwargs

pytestmark = pytest.mark.timeout(240)


def scrape(cluster: KubeSparkCluster) -> dict[tuple[str, frozenset], float]:
    """Samples of this app's dask_k8s_* series, read over HTTP from the scheduler's dashboard address."""
    dashboard = urlsplit(cluster.dashboard_link)
    with urllib.request.urlopen(f"{dashboard.scheme}://{dashboard.netloc}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, frozenset((k, v) for k, v in s.labels.items() if k != "app")): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("dask_k8s_") and s.labels.get("app") == cluster.app.app_id}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0)


def test_metrics_after_scale_3_and_one_deleted_pod(kube, core_api):
    with KubeSparkCluster(**cluster_kwargs(kube)) as cluster:
        cluster.scale(3)
        cluster.wait_for_workers(3, timeout=120)
        victim = next(p for p in app_pods(core_api, cluster.app.app_id, cluster.app.namespace)
                      if p["metadata"]["labels"][labels.EXECUTOR_ID] == "2")
        core_api.delete_namespaced_pod(victim["metadata"]["name"], cluster.app.namespace)

        def replaced() -> dict | None:
            samples = scrape(cluster)
            done = (value(samples, "dask_k8s_executors", group="default", phase="Running") == 3
                    and value(samples, "dask_k8s_pods_created_total") == 4
                    and value(samples, "dask_k8s_pods_deleted_total", group="default", reason="external") == 1)
            return samples if done else None

        samples = wait_until(replaced, timeout=90, interval=0.3, what="/metrics to show the replacement")
        assert value(samples, "dask_k8s_allocator_target", group="default") == 3
        assert value(samples, "dask_k8s_allocator_outstanding") == 0
        assert value(samples, "dask_k8s_api_requests_total", verb="create", code="201") == 4
        assert value(samples, "dask_k8s_api_requests_total", verb="list", code="200") >= 1
        assert value(samples, "dask_k8s_executor_time_to_running_seconds_count", group="default") == 4
        assert value(samples, "dask_k8s_executor_time_to_registered_seconds_count", group="default") >= 3
        assert not [k for k in samples if k[0] == "dask_k8s_pods_failed_total"]
    assert not scrape_after_close_lists(cluster)


def scrape_after_close_lists(cluster: KubeSparkCluster) -> bool:
    """A closed backend leaves the collector (its scheduler is gone, so ask the collector directly)."""
    from dask_k8s_backend.backend.metrics import collector

    return any(s.labels.get("app") == cluster.app.app_id for f in collector().collect() for s in f.samples)
