"""Allocator benchmark: how fast the backend reaches a target, and what it costs the API server.

Runs the real backend core (snapshots store, watch and polling sources, allocator, lifecycle
manager) against the embedded Kubernetes with its simulated kubelet, through ``KubePodApi`` and a
counting wrapper, and measures:

* time from ``set_target(N)`` until the backend's snapshots show N pods Running (N = 1000, and
  5000 with ``--large``);
* API requests per pod (create requests per pod, all requests per pod);
* API requests per minute at steady state with 200 executors (watch + polling only);

then the same with Spark's defaults (batch 5, 1 s delay, no slow start, no immediate round) and
prints the ratios. ``--backend fake`` uses the in-memory FakePodApi (tests/backend/fakes.py) with a
timer "kubelet" instead: it measures the algorithm alone, with no HTTP.

    python benchmarks/allocator.py                 # 1000 pods, ours vs Spark
    python benchmarks/allocator.py --large         # also 5000 pods
    python benchmarks/allocator.py --backend fake  # no embedded Kubernetes needed
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

APP_ID = "bench"
SELECTOR = labels.app_selector(APP_ID)
OURS = AllocationSettings()
SPARK = AllocationSettings(batch_size=5, batch_delay=1.0, slow_start=False, immediate_round=False)


class CountingPodApi:
    """Counts every request made through the PodApi (a watch stream counts as one)."""

    def __init__(self, api: Any) -> None:
        self.api = api
        self.namespace = api.namespace
        self.counts: collections.Counter[str] = collections.Counter()

    def total(self) -> int:
        return sum(self.counts.values())

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.api, name)
        if name.startswith("_") or not callable(target):
            return target

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.counts[name] += 1
            return target(*args, **kwargs)

        return counted


def make_pod(executor_id: int, group: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"bench-exec-{executor_id}",
            "labels": {labels.APP_ID: APP_ID, labels.ROLE: labels.ROLE_WORKER,
                       labels.EXECUTOR_ID: str(executor_id), labels.GROUP: group},
        },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "worker", "image": "ghcr.io/dask/dask:latest", "command": ["dask", "worker"],
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}],
        },
    }


@dataclass
class Result:
    name: str
    target: int
    seconds: float | None
    running: int
    creates: int
    requests: int

    def line(self) -> str:
        took = f"{self.seconds:7.2f} s" if self.seconds is not None else f"not reached ({self.running} running)"
        pods = max(1, self.target if self.seconds is not None else self.running)  # per pod actually started
        return (f"{self.name:<6} target {self.target:>5}: {took}; create requests/pod "
                f"{self.creates / pods:.3f}; all requests/pod {self.requests / pods:.3f}")


class Backend:
    """The backend core wired as the plugin wires it."""

    def __init__(self, api: Any, settings: AllocationSettings, polling_interval: float = 30.0) -> None:
        clock = SystemClock()
        executor = ExecutorSettings(api_polling_interval=polling_interval)
        self.api = CountingPodApi(api)
        self.store = SnapshotsStore(clock=clock)
        self.failures = FailureTracker(settings=executor, clock=clock)
        self.allocator = ExecutorPodsAllocator(api=self.api, settings=settings, pod_factory=make_pod,
                                               failures=self.failures, clock=clock, delete_grace_period=0)
        self.lifecycle = ExecutorPodsLifecycleManager(api=self.api, settings=executor, failures=self.failures,
                                                      clock=clock, on_executor_lost=lambda i, e: None)
        self.watch = ExecutorPodsWatchSource(self.api, self.store, SELECTOR, clock)
        self.polling = ExecutorPodsPollingSource(self.api, self.store, SELECTOR, clock, interval=polling_interval)

    async def start(self) -> None:
        self.lifecycle.start(self.store)
        self.allocator.start(self.store)
        self.watch.start()
        await asyncio.wait_for(self.watch.listed.wait(), 30)
        self.polling.start()

    def running(self) -> int:
        return sum(1 for s in self.store.current.executor_pods.values() if isinstance(s, PodRunning))

    async def reach(self, target: int, limit: float) -> float | None:
        started = time.monotonic()
        self.allocator.set_target(target)
        while time.monotonic() - started < limit:
            if self.running() >= target:
                return time.monotonic() - started
            await asyncio.sleep(0.05)
        return None

    async def stop(self) -> None:
        for step in (self.polling.stop, self.watch.stop, self.allocator.stop, self.store.stop):
            with contextlib.suppress(Exception):
                await step()
        with contextlib.suppress(Exception):
            await self.api.api.delete_pods(SELECTOR)


@contextlib.asynccontextmanager
async def pod_api(kind: str, pods: int, latency: float = 0.005):
    """A PodApi on a fresh cluster big enough for ``pods`` pods."""
    if kind == "fake":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "backend"))
        from fakes import FakePodApi

        api = FakePodApi()
        _add_latency(api, latency)
        kubelet = asyncio.create_task(_fake_kubelet(api))
        try:
            yield api
        finally:
            kubelet.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await kubelet
        return
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config

    from dask_k8s_backend.kube.pod_api import KubePodApi
    from dask_k8s_backend.embedded.cluster import EmbeddedKubernetes
    from dask_k8s_backend.kube.client import STREAM_CONNECTIONS

    nodes = max(1, -(-pods // 500))
    kube = EmbeddedKubernetes(kubelet="simulated", nodes=nodes, cpu="1000", memory="1000Gi", pods=500)
    with kube:
        configuration = k8s_client.Configuration()
        k8s_config.load_kube_config(config_file=str(kube.kubeconfig), client_configuration=configuration)
        configuration.connection_pool_maxsize = 32 + STREAM_CONNECTIONS  # one per API thread and per watch
        api = KubePodApi(k8s_client.ApiClient(configuration), "default", max_threads=32)
        try:
            yield api
        finally:
            await api.close()


def _add_latency(api: Any, seconds: float) -> None:
    """Each request of the fake takes ``seconds`` (a modest API server round trip)."""
    for name in ("list_pods", "create_pod", "delete_pod", "delete_pods", "patch_pod_labels"):
        call = getattr(api, name)

        async def slow(*args: Any, _call: Any = call, **kwargs: Any) -> Any:
            await asyncio.sleep(seconds)
            return await _call(*args, **kwargs)

        setattr(api, name, slow)


async def _fake_kubelet(api: Any, start_delay: float = 0.5) -> None:
    """Moves every Pending pod to Running ``start_delay`` seconds after it was created."""
    born: dict[str, float] = {}
    while True:
        now = time.monotonic()
        for name, pod in list(api.pods.items()):
            if (pod.get("status") or {}).get("phase") == "Pending":
                if now - born.setdefault(name, now) >= start_delay:
                    api.set_status(name, phase="Running")
        await asyncio.sleep(0.05)


async def ramp(kind: str, name: str, settings: AllocationSettings, target: int, limit: float,
               latency: float) -> Result:
    async with pod_api(kind, target, latency) as api:
        backend = Backend(api, settings)
        await backend.start()
        try:
            seconds = await backend.reach(target, limit)
            return Result(name, target, seconds, backend.running(), backend.api.counts["create_pod"], backend.api.total())
        finally:
            await backend.stop()


async def steady(kind: str, executors: int, seconds: float, polling_interval: float, latency: float) -> float:
    """API requests per minute once ``executors`` pods are Running and nothing changes."""
    async with pod_api(kind, executors, latency) as api:
        backend = Backend(api, OURS, polling_interval)
        await backend.start()
        try:
            if await backend.reach(executors, 120) is None:
                raise RuntimeError(f"steady state: {executors} executors were not all Running within 120 s")
            before = backend.api.total()
            await asyncio.sleep(seconds)
            return (backend.api.total() - before) * 60.0 / seconds
        finally:
            await backend.stop()


async def main(args: argparse.Namespace) -> int:
    targets = [1000] + ([5000] if args.large else [])
    limits = {1000: 10.0, 5000: 60.0}
    ok = True
    for target in targets:
        ours = await ramp(args.backend, "ours", OURS, target, limit=max(120.0, limits[target] * 4),
                           latency=args.fake_latency)
        print(ours.line(), flush=True)
        ok &= ours.seconds is not None and ours.seconds < limits[target] and ours.creates / target <= 1.05
        if args.skip_spark:
            continue
        spark = await ramp(args.backend, "spark", SPARK, target, limit=args.spark_limit, latency=args.fake_latency)
        print(spark.line(), flush=True)
        if ours.seconds:
            spark_time = spark.seconds or (args.spark_limit * target / max(1, spark.running))
            note = "" if spark.seconds else f" (Spark extrapolated from {spark.running} pods in {args.spark_limit:g} s)"
            print(f"ratio  target {target:>5}: Spark takes {spark_time / ours.seconds:.1f}x as long{note}", flush=True)
    if args.steady_seconds > 0:
        rate = await steady(args.backend, 200, args.steady_seconds, args.polling_interval, args.fake_latency)
        print(f"steady 200 executors: {rate:.2f} API requests/min (polling every {args.polling_interval:g} s)",
              flush=True)
        ok &= rate <= 3.0
    print("targets met" if ok else "TARGETS MISSED", flush=True)
    return 0 if ok else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large", action="store_true", help="also measure 5000 pods")
    parser.add_argument("--backend", choices=("embedded", "fake"), default="embedded")
    parser.add_argument("--skip-spark", action="store_true", help="do not run Spark's defaults for comparison")
    parser.add_argument("--spark-limit", type=float, default=240.0, help="give up on Spark's ramp after this many s")
    parser.add_argument("--steady-seconds", type=float, default=60.0, help="0 skips the steady-state figure")
    parser.add_argument("--polling-interval", type=float, default=30.0)
    parser.add_argument("--fake-latency", type=float, default=0.005, help="seconds per request of the fake API")
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(asyncio.run(main(parse())))
