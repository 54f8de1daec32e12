"""Every user future resolves: a task whose worker group stopped creating pods fails with the
Kubernetes explanation (reason, exit code, the limit, what to change) instead of hanging."""

from __future__ import annotations

import time

import pytest
from distributed import Client
from distributed.scheduler import KilledWorker

from dask_k8s_backend import KubeSparkCluster
from dask_k8s_backend.backend.allocation.stranded import WorkerGroupStopped

from k8s_helpers import wait_until

from .conftest import cluster_kwargs

pytestmark = pytest.mark.timeout(240)

NO_NANNY_MEMORY_GUARD = {"DASK_DISTRIBUTED__WORKER__MEMORY__TERMINATE": "False",
                         "DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE": "False",
                         "DASK_DISTRIBUTED__WORKER__MEMORY__SPILL": "False",
                         "DASK_DISTRIBUTED__WORKER__MEMORY__TARGET": "False"}


def test_an_oomkilled_task_whose_group_is_blocked_raises_the_explanation_within_30_s(kube):
    kwargs = cluster_kwargs(kube, worker_memory="128MiB", executor={"max-failures": 1},
                            worker={"min-memory-overhead": "64MiB", "env": NO_NANNY_MEMORY_GUARD})
    with KubeSparkCluster(n_workers=1, **kwargs) as cluster, Client(cluster) as client:
        client.wait_for_workers(1, timeout=120)

        def hog() -> int:  # defined here so that it is pickled by value
            import time

            blocks = [bytearray(64 << 20) for _ in range(8)]  # 512 MiB, well above the pod's limit
            time.sleep(10)
            return len(blocks)

        future = client.submit(hog, pure=False)
        wait_until(lambda: cluster.refresh_status().errors, timeout=90, what="the group blocked by max-failures")
        blocked_at = time.monotonic()
        with pytest.raises(WorkerGroupStopped) as info:
            future.result(timeout=30)
        assert time.monotonic() - blocked_at < 30
        text = str(info.value)
        assert "OOMKilled" in text and "exit code 137" in text and "max-failures = 1" in text
        assert "k8s-backend.worker.memory" in text
        assert any("task(s) failed because no worker will start" in e for e in cluster.refresh_status().events)


def test_a_task_submitted_after_the_group_is_blocked_fails_too(kube):
    kwargs = cluster_kwargs(kube, image="registry.invalid/dask:nope", allocation={"unrecoverable-pending-confirm": "2s"})
    with KubeSparkCluster(n_workers=1, **kwargs) as cluster, Client(cluster) as client:
        wait_until(lambda: cluster.refresh_status().errors, timeout=60, what="the group blocked by the bad image")
        with pytest.raises(WorkerGroupStopped, match="ImagePullBackOff|ErrImagePull"):
            client.submit(sum, [1, 2]).result(timeout=30)


def test_a_worker_its_nanny_kills_for_memory_gets_the_pod_the_limit_and_the_fix_beside_killed_worker(kube):
    with KubeSparkCluster(n_workers=1, **cluster_kwargs(kube, worker_memory="256MiB")) as cluster, \
            Client(cluster) as client:
        client.wait_for_workers(1, timeout=120)

        def grow() -> int:  # defined here so that it is pickled by value
            import time

            blocks = []
            for _ in range(40):  # 640 MiB in steps: the nanny's guard (95% of 256 MiB) fires long before the pod's limit
                blocks.append(bytearray(16 << 20))
                time.sleep(0.05)
            return len(blocks)

        with pytest.raises(KilledWorker):
            client.submit(grow, pure=False).result(timeout=150)
        wait_until(lambda: any("failed with KilledWorker" in e for e in cluster.refresh_status().events), timeout=10,
                   what="the KilledWorker note")
        note = next(e for e in cluster.refresh_status().events if "failed with KilledWorker" in e)
        assert "memory guard" in note and "256 MiB" in note and "k8s-backend.worker.memory" in note
        assert "pod " in note and "-exec-1" in note
