"""KubeSparkCluster end to end on the embedded Kubernetes (process kubelet: pods are processes)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from distributed import Client, Event, wait
from kubernetes import client as k8s_client

from dask_k8s_backend import KubeSparkCluster
from dask_k8s_backend.cluster.waiting import WorkersNotReadyError

from k8s_helpers import app_pods, wait_until

from .conftest import cluster_kwargs

pytestmark = pytest.mark.timeout(240)


def live(pods: list[dict]) -> list[dict]:
    return [p for p in pods if p.get("status", {}).get("phase") in ("Pending", "Running") and not p["metadata"].get("deletionTimestamp")]


def test_scale_up_then_down_creates_and_removes_pods(kube, core_api):
    with KubeSparkCluster(**cluster_kwargs(kube)) as cluster, Client(cluster) as client:
        cluster.scale(3)
        client.wait_for_workers(3, timeout=120)
        assert {str(ws["name"]) for ws in client.scheduler_info()["workers"].values()} == {"1", "2", "3"}
        assert len(live(app_pods(core_api, cluster.app.app_id))) == 3

        cluster.scale(1)
        wait_until(lambda: len(client.scheduler_info()["workers"]) == 1, what="scale down to 1 worker")
        wait_until(lambda: len(live(app_pods(core_api, cluster.app.app_id))) == 1, what="pods deleted")
        assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6


def test_close_leaves_zero_pods_checked_through_the_api(kube, core_api):
    cluster = KubeSparkCluster(n_workers=2, **cluster_kwargs(kube))
    app_id = cluster.app.app_id
    cluster.wait_for_workers(2, timeout=120)
    cluster.close()
    assert app_pods(core_api, app_id) == []
    assert cluster.pods_left_after_close == 0


def test_scale_down_retires_workers_so_their_data_survives(kube):
    with KubeSparkCluster(n_workers=2, **cluster_kwargs(kube)) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=120)
        futures = client.map(lambda i: bytes(1000) * i, range(20))
        wait(futures)
        holders = {w for w, keys in client.has_what().items() if keys}
        assert len(holders) == 2
        cluster.scale(1)
        wait_until(lambda: len(client.scheduler_info()["workers"]) == 1, what="scale down to 1")
        assert [len(x) for x in client.gather(futures)] == [1000 * i for i in range(20)]


def test_result_is_correct_while_a_worker_pod_is_deleted(kube, core_api):
    with KubeSparkCluster(n_workers=2, **cluster_kwargs(kube)) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=120)
        started = Event("started")

        def slow_square(x, ev=started):
            import time

            ev.set()
            time.sleep(0.2)
            return x * x

        futures = client.map(slow_square, range(40))
        started.wait(timeout=60)
        victim = live(app_pods(core_api, cluster.app.app_id))[0]["metadata"]["name"]
        core_api.delete_namespaced_pod(victim, "default", grace_period_seconds=0)
        assert sum(client.gather(futures)) == sum(x * x for x in range(40))
        # The lost executor is replaced by a new one with a new id; ids are never reused.
        client.wait_for_workers(2, timeout=120)
        names = {str(ws["name"]) for ws in client.scheduler_info()["workers"].values()}
        assert "3" in names


def test_adapt_scales_up_under_load_and_back_to_zero_when_idle(kube, core_api):
    with KubeSparkCluster(**cluster_kwargs(kube)) as cluster, Client(cluster) as client:
        cluster.adapt(minimum=0, maximum=3, interval="200ms", wait_count=2, target_duration="1s", scale_down_window="1s")

        def slow(x):
            import time

            time.sleep(0.5)
            return x

        futures = client.map(slow, range(30))
        wait_until(lambda: len(client.scheduler_info()["workers"]) >= 2, timeout=120, what="adapt up")
        assert sorted(client.gather(futures)) == list(range(30))
        del futures  # results held in worker memory keep a worker (Dask's adaptive_target counts memory)
        wait_until(lambda: not client.scheduler_info()["workers"], timeout=90, what="adapt down to 0")
        wait_until(lambda: not live(app_pods(core_api, cluster.app.app_id)), timeout=60, what="pods gone")


def test_unknown_worker_is_refused(kube):
    with KubeSparkCluster(**cluster_kwargs(kube)) as cluster, Client(cluster) as client:
        proc = subprocess.run(
            [sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address, "--name", "999",
             "--no-nanny", "--no-dashboard", "--death-timeout", "20"],
            capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode != 0
        assert "executor 999 is unknown" in proc.stdout + proc.stderr
        assert client.scheduler_info()["workers"] == {}
        assert any("executor 999 is unknown" in e for e in cluster.refresh_status().events)


def test_unschedulable_pods_are_shown_and_wait_for_workers_fails_with_the_reason(kube):
    with KubeSparkCluster(worker_cores=64, **cluster_kwargs(kube)) as cluster:
        cluster.scale(1)
        with pytest.raises(WorkersNotReadyError, match="Insufficient cpu"):
            cluster.wait_for_workers(1, timeout=5)
        status = cluster.refresh_status()
        assert "Insufficient cpu" in status.pending_reasons["1"]
        assert "Insufficient cpu" in cluster.status_table
        assert "Insufficient cpu" in cluster._repr_html_()


def test_oomkilled_explanation_reaches_the_user(kube):
    kwargs = cluster_kwargs(
        kube,
        worker_memory="128MiB",
        worker={"min-memory-overhead": "64MiB", "env": {"DASK_DISTRIBUTED__WORKER__MEMORY__TERMINATE": "False",
                                                        "DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE": "False",
                                                        "DASK_DISTRIBUTED__WORKER__MEMORY__SPILL": "False",
                                                        "DASK_DISTRIBUTED__WORKER__MEMORY__TARGET": "False"}},
    )
    with KubeSparkCluster(n_workers=1, **kwargs) as cluster, Client(cluster) as client:
        client.wait_for_workers(1, timeout=120)

        def hog():
            import time

            blocks = [bytearray(64 << 20) for _ in range(8)]
            time.sleep(10)
            return len(blocks)

        client.submit(hog, pure=False)
        wait_until(lambda: any("OOMKilled" in e for e in cluster.refresh_status().events), timeout=60, what="OOMKilled event")
        message = next(e for e in cluster.refresh_status().events if "OOMKilled" in e)
        assert "executor 1" in message and "memory limit" in message


def test_get_logs_has_scheduler_and_each_executor_pod(kube):
    with KubeSparkCluster(n_workers=1, **cluster_kwargs(kube)) as cluster:
        cluster.wait_for_workers(1, timeout=120)
        logs = cluster.get_logs()
        pod_logs = [k for k in logs if "-exec-1" in k]
        assert "Scheduler" in logs and pod_logs
        assert "Start worker" in logs[pod_logs[0]] or "Starting Worker" in logs[pod_logs[0]]
        assert "worker" in cluster.logs(1).lower()


def test_bad_scale_values_are_refused_before_anything_changes(kube, core_api):
    with KubeSparkCluster(**cluster_kwargs(kube)) as cluster:
        for bad in (-1, 2.5, "3", True):
            with pytest.raises(ValueError, match="scale"):
                cluster.scale(bad)
        assert app_pods(core_api, cluster.app.app_id) == []


def test_async_cluster_context_manager(kube):
    async def main() -> int:
        async with KubeSparkCluster(asynchronous=True, **cluster_kwargs(kube)) as cluster:
            async with Client(cluster, asynchronous=True) as client:
                await cluster.scale(1)
                await client.wait_for_workers(1, timeout=120)
                return await client.submit(lambda x: x + 1, 1)

    assert asyncio.run(main()) == 2


def test_interpreter_exit_without_close_deletes_the_pods(kube, core_api, tmp_path):
    script = tmp_path / "forgetful.py"
    script.write_text(
        "import sys\n"
        "from dask_k8s_backend import KubeSparkCluster\n"
        f"cluster = KubeSparkCluster(n_workers=1, **{cluster_kwargs(kube)!r})\n"
        "cluster.wait_for_workers(1, timeout=120)\n"
        "print('APP', cluster.app.app_id, flush=True)\n"
        "sys.exit(0)  # no close(): the atexit hook must clean up\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    app_id = proc.stdout.split("APP ", 1)[1].split()[0]
    assert app_pods(core_api, app_id) == []
    leases = k8s_client.CoordinationV1Api(core_api.api_client).list_namespaced_lease(
        "default", label_selector=f"dask-k8s-backend/app-id={app_id}")
    assert leases.items == []  # the heartbeat lease went with the pods
