"""Pods that can never work (bad image, command exiting 1, OOM on start) stop after max-failures."""

from __future__ import annotations

import time

import pytest
from distributed import Client

from dask_k8s_backend import KubeSparkCluster
from dask_k8s_backend.cluster.waiting import ExecutorFailuresError

from .scenarios import app_pods, cluster_kwargs, wait_until

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(120)]

MAX_FAILURES = 3
BROKEN = {
    "bad-image": (dict(image="registry.example.com/invalid-image:1.0"), "ErrImagePull|ImagePullBackOff|pull"),
    "command-exits-1": (dict(env={"PYTHONHOME": "/nonexistent"}), "exit code 1|exited with 1|code 1"),
    "oom-on-start": (dict(worker_memory="24MiB", worker={"min-memory-overhead": "0", "memory-overhead-factor": 0}),
                     "OOMKilled"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_repeated_failures_stop_at_max_failures_with_one_clear_error(kube, creations, case):
    extra, cause = BROKEN[case]
    kwargs = cluster_kwargs(kube, executor={"max-failures": MAX_FAILURES},
                            allocation={"pending-timeout": "2s"}, **extra)
    with KubeSparkCluster(**kwargs) as cluster, Client(cluster) as client:
        cluster.scale(2)
        with pytest.raises(ExecutorFailuresError, match=cause) as info:
            client.wait_for_workers(2, timeout=60)
        created = len(creations.for_app(cluster.app.app_id))
        time.sleep(3)  # no event says "nothing more happens": give an endless loop time to show itself
        assert len(creations.for_app(cluster.app.app_id)) == created <= MAX_FAILURES + 2
        message = str(info.value)
        assert "stopped creating pods" in message and str(MAX_FAILURES) in message
        assert cluster.refresh_status().error  # shown in status / the widget too
        app_id = cluster.app.app_id
    wait_until(lambda: not app_pods(kube, app_id), timeout=30, what="pods deleted on close")
