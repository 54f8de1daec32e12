"""Fast verdicts end to end: wait_for_workers() without a timeout raises within a minute for pods
that can never start (an image that cannot be pulled, a request larger than every node), with the
reason and the fix, instead of blocking for pending-timeout (300 s by default)."""

from __future__ import annotations

import time

import pytest

from dask_k8s_backend import KubeSparkCluster
from dask_k8s_backend.cluster.waiting import ExecutorFailuresError

from .conftest import cluster_kwargs

pytestmark = pytest.mark.timeout(180)

VERDICT_WITHIN = 60.0


def _wait_raises(cluster: KubeSparkCluster) -> tuple[ExecutorFailuresError, float]:
    started = time.monotonic()
    with pytest.raises(ExecutorFailuresError) as info:
        cluster.wait_for_workers(1)  # no timeout: only the verdict can end it
    return info.value, time.monotonic() - started


def test_wait_for_workers_without_timeout_raises_fast_for_an_image_that_cannot_be_pulled(kube):
    with KubeSparkCluster(n_workers=1, **cluster_kwargs(kube, image="registry.invalid/dask:nope",
                                                         allocation={"unrecoverable-pending-confirm": "3s"})) as cluster:
        error, elapsed = _wait_raises(cluster)
        assert elapsed < VERDICT_WITHIN
        assert "ImagePullBackOff" in str(error) or "ErrImagePull" in str(error)
        assert "k8s-backend.image" in str(error)
        assert cluster.refresh_status().errors  # the cluster's state says so too


def test_wait_for_workers_without_timeout_raises_fast_for_a_request_larger_than_every_node(kube):
    with KubeSparkCluster(n_workers=1, **cluster_kwargs(kube, worker_memory="64GiB")) as cluster:
        error, elapsed = _wait_raises(cluster)
        assert elapsed < VERDICT_WITHIN
        assert "more than any node can allocate" in str(error) and "Insufficient memory" in str(error)
