"""The backend core against the embedded Kubernetes (simulated kubelet), with fault injection on:
the target is reached and held, executor ids are never duplicated, nothing is left after stop."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from dask_k8s_backend import labels
from dask_k8s_backend.backend.allocation.allocator import ExecutorPodsAllocator
from dask_k8s_backend.backend.executors.failures import FailureTracker
from dask_k8s_backend.backend.executors.lifecycle import ExecutorPodsLifecycleManager
from dask_k8s_backend.backend.observation.polling import ExecutorPodsPollingSource
from dask_k8s_backend.backend.observation.snapshots import SnapshotsStore
from dask_k8s_backend.backend.observation.watch import ExecutorPodsWatchSource
from dask_k8s_backend.clock import SystemClock
from dask_k8s_backend.config import AllocationSettings, ExecutorSettings
from dask_k8s_backend.pods.states import PodRunning

embedded = pytest.importorskip("dask_k8s_backend.embedded.cluster")

APP_ID = "itest"
SELECTOR = labels.app_selector(APP_ID)


def make_pod(executor_id: int, group: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"itest-exec-{executor_id}",
                     "labels": {labels.APP_ID: APP_ID, labels.ROLE: labels.ROLE_WORKER,
                                labels.EXECUTOR_ID: str(executor_id), labels.GROUP: group}},
        "spec": {"restartPolicy": "Never",
                 "containers": [{"name": "worker", "image": "dask:latest", "command": ["dask", "worker"],
                                 "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
    }


async def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def run_backend(kube, target: int) -> None:
    from kubernetes import config as k8s_config

    from dask_k8s_backend.kube.pod_api import KubePodApi

    api = KubePodApi(k8s_config.new_client_from_config(config_file=str(kube.kubeconfig)), "default")
    clock = SystemClock()
    executor = ExecutorSettings(api_polling_interval=2.0, missing_pod_detect_delta=5.0)
    store = SnapshotsStore(clock=clock)
    failures = FailureTracker(settings=executor, clock=clock)
    allocator = ExecutorPodsAllocator(api=api, settings=AllocationSettings(batch_size=8, batch_delay=0.05),
                                      pod_factory=make_pod, failures=failures, clock=clock, delete_grace_period=0)
    lost: list[int] = []
    lifecycle = ExecutorPodsLifecycleManager(api=api, settings=executor, failures=failures, clock=clock,
                                             on_executor_lost=lambda i, e: lost.append(i))
    watch = ExecutorPodsWatchSource(api, store, SELECTOR, clock, timeout_seconds=5)
    polling = ExecutorPodsPollingSource(api, store, SELECTOR, clock, interval=2.0)
    lifecycle.start(store)
    allocator.start(store)
    watch.start()
    polling.start()

    def running() -> set[int]:
        return {i for i, s in store.current.executor_pods.items() if isinstance(s, PodRunning)}

    try:
        allocator.set_target(target)
        await wait_for(lambda: len(running()) == target, 30, f"{target} running executors")
        first = running()
        kube.faults.drop_watches()
        for executor_id in sorted(first)[:3]:
            kube.store.delete("pods", "default", f"itest-exec-{executor_id}", grace_period_seconds=0)
        await wait_for(lambda: len(running()) == target and not running() & set(sorted(first)[:3]), 30,
                       "the 3 deleted executors to be replaced")
        # The allocator replaces a pod as soon as a snapshot lacks it; the lifecycle manager declares it lost
        # only after missing_pod_detect_delta (5 s) without it, so the replacement can come first.
        await wait_for(lambda: len(lost) >= 3, 30, "the 3 deleted executors to be declared lost")
        assert min(running() - first) > max(first)  # replacements get new, never reused ids
        assert sorted(lost)[:3] == sorted(first)[:3]
        names = [p["metadata"]["name"] for p in (await api.list_pods(SELECTOR))[0]]
        assert len(names) == len(set(names)) == target  # target held, no duplicates
    finally:
        for step in (polling.stop, watch.stop, allocator.stop, store.stop):
            await step()
        await api.delete_pods(SELECTOR)
        await wait_for(lambda: not kube.store.list("pods", "default", label_selector=SELECTOR)[0], 30, "no pods left")
        with contextlib.suppress(Exception):
            await api.close()


def test_target_reached_and_held_through_faults_with_unique_ids_and_nothing_left():
    with embedded.EmbeddedKubernetes(kubelet="simulated", nodes=1, pods=110, faults=True) as kube:
        kube.faults.set_error_rate(0.1, codes=(429, 503), retry_after=1)
        asyncio.run(asyncio.wait_for(run_backend(kube, target=20), 120))
