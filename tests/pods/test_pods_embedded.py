"""The built pod runs for real, and real failures get the right explanation (embedded Kubernetes)."""

from __future__ import annotations

import asyncio
import time

import kubernetes
import pytest

from dask_k8s_backend.kube.pod_api import KubePodApi
from dask_k8s_backend.config import Settings, WorkerSettings
from dask_k8s_backend.pods.builder import AppSpec, build_executor_pod
from dask_k8s_backend.pods.exits import explain
from dask_k8s_backend.pods.states import PodFailed, classify

pytestmark = pytest.mark.timeout(120)
APP = AppSpec(app_id="podtest1", app_name="Pod Builder Test", namespace="default")


@pytest.fixture(scope="module")
def kube():
    cluster = pytest.importorskip("dask_k8s_backend.embedded.cluster")
    with cluster.EmbeddedKubernetes(kubelet="process", nodes=1, cpu="4", memory="8Gi") as k:
        yield k


def api_for(kube) -> KubePodApi:
    return KubePodApi(kubernetes.config.new_client_from_config(config_file=str(kube.kubeconfig)), "default",
                      request_timeout=30)


async def wait_for_pod(api: KubePodApi, name: str, condition, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        pods, _ = await api.list_pods(f"dask-k8s-backend/app-id={APP.app_id}")
        pod = next((p for p in pods if p["metadata"]["name"] == name), None)
        if pod is not None and condition(pod):
            return pod
        if time.monotonic() > deadline:
            raise AssertionError(f"pod {name} never reached the expected state; last seen: {pod and pod.get('status')}")
        await asyncio.sleep(0.1)


def test_built_pod_starts_a_worker_that_registers_under_its_executor_id(kube):
    from distributed import Scheduler

    settings = Settings(worker=WorkerSettings(cores=1, memory=512 << 20, death_timeout=20))

    async def run() -> None:
        api = api_for(kube)
        async with Scheduler(host="0.0.0.0", port=0, dashboard_address=None, validate=False) as scheduler:
            try:
                address = f"tcp://127.0.0.1:{scheduler.port}"
                pod = build_executor_pod(executor_id=1, app=APP, settings=settings, scheduler_address=address)
                await api.create_pod(pod)
                deadline = time.monotonic() + 60
                while not any(str(ws.name) == "1" for ws in scheduler.workers.values()):
                    assert time.monotonic() < deadline, "the worker of executor 1 never registered"
                    await asyncio.sleep(0.1)
                ws = next(ws for ws in scheduler.workers.values() if str(ws.name) == "1")
                assert ws.nthreads == 1 and ws.memory_limit == 512 << 20
                running = await wait_for_pod(api, pod["metadata"]["name"], lambda p: p["status"].get("podIP"))
                assert ws.host == running["status"]["podIP"]  # --host $(POD_IP) was expanded
            finally:
                await api.delete_pods(f"dask-k8s-backend/app-id={APP.app_id}")
                await api.close()

    asyncio.run(asyncio.wait_for(run(), 100))


def test_real_oom_kill_is_explained_with_the_memory_limit(kube):
    settings = Settings(worker=WorkerSettings(memory=32 << 20, min_memory_overhead=32 << 20, memory_overhead_factor=0.0))

    async def run() -> None:
        api = api_for(kube)
        try:
            pod = build_executor_pod(executor_id=2, app=APP, settings=settings, scheduler_address="tcp://127.0.0.1:1")
            container = pod["spec"]["containers"][0]
            container["command"] = ["python", "-c", "import time; x = bytearray(400 << 20); time.sleep(30)"]
            container["args"] = []
            await api.create_pod(pod)
            failed = await wait_for_pod(api, pod["metadata"]["name"], lambda p: isinstance(classify(p), PodFailed))
            text = explain(classify(failed))
            assert text.startswith("executor 2 OOMKilled: container used more than its 64 MiB memory limit"), text
        finally:
            await api.delete_pods(f"dask-k8s-backend/app-id={APP.app_id}")
            await api.close()

    asyncio.run(asyncio.wait_for(run(), 100))


def test_missing_command_is_explained_as_command_not_found(kube):
    async def run() -> None:
        api = api_for(kube)
        try:
            pod = build_executor_pod(executor_id=3, app=APP, settings=Settings(), scheduler_address="tcp://127.0.0.1:1")
            pod["spec"]["containers"][0]["command"] = ["no-such-command-anywhere"]
            await api.create_pod(pod)
            failed = await wait_for_pod(api, pod["metadata"]["name"], lambda p: isinstance(classify(p), PodFailed))
            text = explain(classify(failed))
            assert text.startswith("executor 3 ") and ("command not found" in text or "ContainerCannotRun" in text), text
        finally:
            await api.delete_pods(f"dask-k8s-backend/app-id={APP.app_id}")
            await api.close()

    asyncio.run(asyncio.wait_for(run(), 100))


def test_unschedulable_pod_reports_the_schedulers_message(kube):
    from dask_k8s_backend.pods.exits import pending_reason

    settings = Settings(worker=WorkerSettings(cores=64))  # the node has 4 cpus

    async def run() -> None:
        api = api_for(kube)
        try:
            pod = build_executor_pod(executor_id=4, app=APP, settings=settings, scheduler_address="tcp://127.0.0.1:1")
            await api.create_pod(pod)
            stuck = await wait_for_pod(api, pod["metadata"]["name"], lambda p: pending_reason(p) is not None, timeout=30)
            reason = pending_reason(stuck)
            assert reason.startswith("Unschedulable: ") and "Insufficient cpu" in reason, reason
        finally:
            await api.delete_pods(f"dask-k8s-backend/app-id={APP.app_id}")
            await api.close()

    asyncio.run(asyncio.wait_for(run(), 60))
