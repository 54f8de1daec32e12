"""Allocator benchmark: how fast the backend reaches a target, and what it costs the API server.

Runs the real backend core (snapshots store, watch and polling sources, allocator, lifecycle
manager) through ``KubePodApi`` and a counting wrapper, and measures:

* time from ``set_target(N)`` until the backend's snapshots show N pods Running (N = 1000, and
  5000 with ``--large``; ``--targets`` picks others);
* API requests per pod (create requests per pod, all requests per pod);
* API requests per minute at steady state with 200 executors (watch + polling only);

for our allocation settings and for Spark's defaults (batch 5, 1 s delay, no slow start, no
immediate round). Each kind runs ``--repeat`` times per target, alternating (ours first in even
rounds, Spark first in odd ones, so a drifting machine load hits both alike); it prints min /
median / max per kind and the ratio of medians, writes a JSON record of every run and a PNG
timeline (pods seen and Running over time, ours beside Spark's) and prints both paths.

Where the pods run:

* ``--backend embedded`` (default): a fresh embedded Kubernetes with simulated kubelets in this
  process per run, reached with a bare ApiClient (the in-process reference figure);
* ``--kubeconfig PATH``: any API server (e.g. ``ci/upstream_k8s.py up``), reached with the client a
  user of ``k8s://`` gets (``create_api_client`` with the default settings: rate limit, retries,
  timeouts). Every pod carries this run's label; each run ends by deleting them and waiting until
  they are gone, also after a failure, Ctrl-C or SIGTERM, so nothing is left on the server;
* ``--backend fake``: the in-memory FakePodApi (tests/backend/fakes.py) with a timer "kubelet":
  the algorithm alone, no HTTP.

    python benchmarks/allocator.py                          # 1000 pods, ours vs Spark, 3 rounds
    python benchmarks/allocator.py --large                  # also 5000 pods
    python benchmarks/allocator.py --kubeconfig kc.yaml --targets 5000 --repeat 1
    python benchmarks/allocator.py --backend fake           # no Kubernetes needed
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import json
import logging
import os
import platform
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from dask_k8s_backend import labels
from dask_k8s_backend.backend.allocation.allocator import ExecutorPodsAllocator
from dask_k8s_backend.backend.executors.failures import FailureTracker
from dask_k8s_backend.backend.executors.lifecycle import ExecutorPodsLifecycleManager
from dask_k8s_backend.backend.observation.polling import ExecutorPodsPollingSource
from dask_k8s_backend.backend.observation.snapshots import SnapshotsStore
from dask_k8s_backend.backend.observation.watch import ExecutorPodsWatchSource
from dask_k8s_backend.clock import SystemClock
from dask_k8s_backend.config import AllocationSettings, ExecutorSettings, load_settings
from dask_k8s_backend.embedded.cluster import EmbeddedKubernetes
from dask_k8s_backend.kube.client import STREAM_CONNECTIONS, create_api_client
from dask_k8s_backend.kube.pod_api import KubePodApi
from dask_k8s_backend.pods.states import PodRunning

try:  # optional: without it the figures and the JSON record are still written
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot
except ImportError:
    pyplot = None

logger = logging.getLogger(__name__)

#: Labels every pod of this process with its run, so cleanup deletes exactly what this run created.
RUN_LABEL = "dask-k8s-bench/run"
RUN_ID = f"bench-{secrets.token_hex(3)}"
RUN_SELECTOR = f"{RUN_LABEL}={RUN_ID}"
APP_ID = RUN_ID
SELECTOR = labels.app_selector(APP_ID)
OURS = AllocationSettings()
SPARK = AllocationSettings(batch_size=5, batch_delay=1.0, slow_start=False, immediate_round=False)
KINDS = {"ours": OURS, "spark": SPARK}
#: Pass marks per target (ours, median): time to all Running.
LIMITS = {1000: 10.0, 5000: 60.0}
CLEANUP_LIMIT = 600.0  # seconds to wait for the deleted pods to be gone from the server
#: A DELETE of thousands of pods by label can take longer than a request's default 30 s on a busy server.
CLEANUP_REQUEST_TIMEOUT = 180.0
INSTALL_HINT = "pip install matplotlib  (or: pip install -e '.[bench]')"


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


def make_pod(executor_id: int, group: str, app_id: str = APP_ID) -> dict:
    """A minimal worker pod; the run label lets cleanup find it whatever app id it has."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{app_id}-exec-{executor_id}",
            "labels": {labels.APP_ID: app_id, labels.ROLE: labels.ROLE_WORKER, RUN_LABEL: RUN_ID,
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
    limit: float = 0.0
    #: [seconds since set_target, create requests sent, pods seen by the backend, pods Running]
    timeline: list[list[float]] = field(default_factory=list)

    def effective_seconds(self) -> float:
        """The time, or (not reached) the time extrapolated from the pods Running at the limit."""
        if self.seconds is not None:
            return self.seconds
        return self.limit * self.target / max(1, self.running)

    def all_seen_after(self) -> float | None:
        """When the backend first saw every pod created: the rest of the time is the server's (scheduler, nodes)."""
        return next((point[0] for point in self.timeline if point[2] >= self.target), None)

    def line(self) -> str:
        took = f"{self.seconds:7.2f} s" if self.seconds is not None else f"not reached ({self.running} running)"
        pods = max(1, self.target if self.seconds is not None else self.running)  # per pod actually started
        seen = self.all_seen_after()
        created = f"; all {self.target} created after {seen:.2f} s" if seen is not None else ""
        return (f"{self.name:<6} target {self.target:>5}: {took}{created}; create requests/pod "
                f"{self.creates / pods:.3f}; all requests/pod {self.requests / pods:.3f}")


class Backend:
    """The backend core wired as the plugin wires it."""

    def __init__(self, api: Any, settings: AllocationSettings, polling_interval: float = 30.0,
                 app_id: str = APP_ID) -> None:
        clock = SystemClock()
        executor = ExecutorSettings(api_polling_interval=polling_interval)
        self.selector = labels.app_selector(app_id)
        self.api = CountingPodApi(api)
        self.store = SnapshotsStore(clock=clock)
        self.failures = FailureTracker(settings=executor, clock=clock)
        self.allocator = ExecutorPodsAllocator(api=self.api, settings=settings,
                                               pod_factory=functools.partial(make_pod, app_id=app_id),
                                               failures=self.failures, clock=clock, delete_grace_period=0)
        self.lifecycle = ExecutorPodsLifecycleManager(api=self.api, settings=executor, failures=self.failures,
                                                      clock=clock, on_executor_lost=lambda i, e: None)
        self.watch = ExecutorPodsWatchSource(self.api, self.store, self.selector, clock)
        self.polling = ExecutorPodsPollingSource(self.api, self.store, self.selector, clock,
                                                 interval=polling_interval)
        self.timeline: list[list[float]] = []

    async def start(self) -> None:
        self.lifecycle.start(self.store)
        self.allocator.start(self.store)
        self.watch.start()
        await asyncio.wait_for(self.watch.listed.wait(), 30)
        self.polling.start()

    def running(self) -> int:
        return sum(1 for s in self.store.current.executor_pods.values() if isinstance(s, PodRunning))

    def _sample(self, elapsed: float) -> None:
        """Record a timeline point when something changed (or each second), to keep the record small."""
        point = [round(elapsed, 3), self.api.counts["create_pod"], len(self.store.current.executor_pods),
                 self.running()]
        last = self.timeline[-1] if self.timeline else None
        if last is None or last[1:] != point[1:] or elapsed - last[0] >= 1.0:
            self.timeline.append(point)

    async def reach(self, target: int, limit: float) -> float | None:
        started = time.monotonic()
        self.allocator.set_target(target)
        while (elapsed := time.monotonic() - started) < limit:
            self._sample(elapsed)
            if self.running() >= target:
                return elapsed
            await asyncio.sleep(0.05)
        return None

    async def stop(self) -> None:
        for step in (self.polling.stop, self.watch.stop, self.allocator.stop, self.store.stop):
            with contextlib.suppress(Exception):
                await step()
        with contextlib.suppress(Exception):
            await self.api.api.delete_pods(self.selector)


# ---------------------------------------------------------------------------- where the pods run

@contextlib.asynccontextmanager
async def pod_api(kind: str, pods: int, latency: float = 0.005, kubeconfig: Path | None = None,
                  namespace: str = "default") -> AsyncIterator[Any]:
    """A PodApi on a cluster big enough for ``pods`` pods (fresh for fake/embedded, given for kubeconfig)."""
    if kind == "fake":
        opened = fake_pod_api(latency)
    elif kind == "kubeconfig":
        if kubeconfig is None:
            raise ValueError("kind 'kubeconfig' needs the kubeconfig path")
        opened = server_pod_api(kubeconfig, namespace)
    else:
        opened = embedded_pod_api(pods, namespace)
    async with opened as api:
        yield api


@contextlib.asynccontextmanager
async def fake_pod_api(latency: float) -> AsyncIterator[Any]:
    """The in-memory fake with a timer kubelet (tests/ is not a package, hence the late import)."""
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


@contextlib.asynccontextmanager
async def embedded_pod_api(pods: int, namespace: str) -> AsyncIterator[KubePodApi]:
    """A fresh in-process embedded Kubernetes (500 pods per simulated node), bare ApiClient."""
    nodes = max(1, -(-pods // 500))
    kube = EmbeddedKubernetes(kubelet="simulated", nodes=nodes, cpu="1000", memory="1000Gi", pods=500)
    with kube:
        configuration = k8s_client.Configuration()
        k8s_config.load_kube_config(config_file=str(kube.kubeconfig), client_configuration=configuration)
        configuration.connection_pool_maxsize = 32 + STREAM_CONNECTIONS  # one per API thread and per watch
        api = KubePodApi(k8s_client.ApiClient(configuration), namespace, max_threads=32)
        try:
            yield api
        finally:
            await api.close()


def library_pod_api(kubeconfig: Path, namespace: str, request_timeout: float | None = None) -> KubePodApi:
    """``KubePodApi`` over the client ``k8s://`` builds (default settings), as ``build_components`` makes it."""
    overrides: dict[str, Any] = {"authenticate.kubeconfig": str(kubeconfig)}
    if request_timeout is not None:
        overrides["api.request-timeout"] = request_timeout
    settings = load_settings(overrides)
    client = create_api_client(None, settings)
    return KubePodApi(client, namespace, request_timeout=settings.api.request_timeout,
                      connect_timeout=settings.api.connection_timeout)


@contextlib.asynccontextmanager
async def server_pod_api(kubeconfig: Path, namespace: str) -> AsyncIterator[KubePodApi]:
    """A given API server; on the way out (also on error or cancellation) every pod of this run is removed."""
    api = library_pod_api(kubeconfig, namespace)
    try:
        yield api
    finally:
        await api.close()  # waits for the create calls still queued, so none lands after the sweep
        await remove_run_pods(kubeconfig, namespace)


async def remove_run_pods(kubeconfig: Path, namespace: str, limit: float = CLEANUP_LIMIT) -> int:
    """Delete every pod carrying this run's label and wait until the server lists none; returns the rest.

    Never raises: it runs in ``finally`` blocks, where an error would hide the measurement or the first error.
    """
    api = library_pod_api(kubeconfig, namespace, request_timeout=CLEANUP_REQUEST_TIMEOUT)
    try:
        return await _delete_and_wait(api, limit)
    finally:
        await api.close()


async def _delete_and_wait(api: Any, limit: float) -> int:
    """Delete by label (repeated: a pod created between LIST and DELETE is caught next time) until none is left.

    A failed request (a busy server times out a large DELETE but goes on deleting) is retried until ``limit``.
    """
    started = time.monotonic()
    left = -1
    while time.monotonic() - started < limit:
        try:
            pods, _ = await api.list_pods(RUN_SELECTOR)
            left = len(pods)
            if left == 0:
                return 0
            if not all((p.get("metadata") or {}).get("deletionTimestamp") for p in pods):
                await api.delete_pods(RUN_SELECTOR)
        except Exception as e:
            logger.warning("cleanup of %s: %s; trying again", RUN_SELECTOR, e)
        await asyncio.sleep(1.0)
    logger.error("%d pods of this run (%s) are still on the server after %.0f s; remove them with: kubectl "
                 "delete pods -n %s -l %s", left, RUN_SELECTOR, limit, api.namespace, RUN_SELECTOR)
    return left


async def pod_capacity(api: KubePodApi) -> int | None:
    """Sum of the nodes' allocatable pods (None when nodes may not be listed)."""
    try:
        nodes = await api.list_nodes()
    except Exception:
        logger.debug("cannot list nodes", exc_info=True)
        return None
    return sum(int((n.get("status") or {}).get("allocatable", {}).get("pods", 0)) for n in nodes)


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


# ---------------------------------------------------------------------------- measurements

async def ramp(args: argparse.Namespace, name: str, target: int, limit: float, round_: int) -> Result:
    """One ramp from 0 to ``target`` Running with one kind's settings, on its own app id."""
    async with pod_api(args.backend, target, args.fake_latency, args.kubeconfig, args.namespace) as api:
        backend = Backend(api, KINDS[name], app_id=f"{RUN_ID}-{name}-{target}-{round_}")
        await backend.start()
        try:
            seconds = await backend.reach(target, limit)
            return Result(name, target, seconds, backend.running(), backend.api.counts["create_pod"],
                          backend.api.total(), limit, backend.timeline)
        finally:
            await backend.stop()


async def steady(args: argparse.Namespace, name: str, executors: int) -> float:
    """API requests per minute once ``executors`` pods are Running and nothing changes."""
    async with pod_api(args.backend, executors, args.fake_latency, args.kubeconfig, args.namespace) as api:
        backend = Backend(api, KINDS[name], args.polling_interval, app_id=f"{RUN_ID}-{name}-steady")
        await backend.start()
        try:
            if await backend.reach(executors, 180) is None:
                raise RuntimeError(f"steady state: {executors} executors were not all Running within 180 s")
            before = backend.api.total()
            await asyncio.sleep(args.steady_seconds)
            return (backend.api.total() - before) * 60.0 / args.steady_seconds
        finally:
            await backend.stop()


def order_of(round_: int, skip_spark: bool) -> list[str]:
    """Ours first in even rounds, Spark first in odd ones (ABBA), so load drift hits both kinds alike."""
    if skip_spark:
        return ["ours"]
    return ["ours", "spark"] if round_ % 2 == 0 else ["spark", "ours"]


def limit_for(args: argparse.Namespace, name: str, target: int) -> float:
    """Ours gets ``--ours-limit`` or four times its pass mark (at least 120 s); Spark gets ``--spark-limit``."""
    if name == "spark":
        return args.spark_limit
    return args.ours_limit or max(120.0, LIMITS.get(target, target * 0.012) * 4)


# ---------------------------------------------------------------------------- report

def spread(values: list[float]) -> tuple[float, float, float]:
    return min(values), statistics.median(values), max(values)


def summary(results: list[Result], target: int) -> dict[str, Any]:
    """min / median / max per kind for one target, and Spark's median over ours."""
    out: dict[str, Any] = {"target": target}
    for name in KINDS:
        runs = [r for r in results if r.name == name and r.target == target]
        if not runs:
            continue
        started = [max(1, r.target if r.seconds is not None else r.running) for r in runs]
        out[name] = {
            "runs": len(runs),
            "seconds": spread([r.effective_seconds() for r in runs]),
            "extrapolated": sum(r.seconds is None for r in runs),
            "running_at_limit": [r.running for r in runs if r.seconds is None],
            "create_requests_per_pod": spread([r.creates / n for r, n in zip(runs, started)]),
            "requests_per_pod": spread([r.requests / n for r, n in zip(runs, started)]),
        }
    if "ours" in out and "spark" in out:
        out["ratio_of_medians"] = out["spark"]["seconds"][1] / out["ours"]["seconds"][1]
    return out


def summary_lines(stats: dict[str, Any], spark_limit: float) -> list[str]:
    lines = []
    for name in KINDS:
        if name not in stats:
            continue
        s = stats[name]
        low, mid, high = s["seconds"]
        note = ""
        if s["extrapolated"]:
            note = (f" ({s['extrapolated']} of {s['runs']} not reached: {s['running_at_limit']} Running after "
                    f"{spark_limit if name == 'spark' else 'the limit'} s, time extrapolated)")
        c = s["create_requests_per_pod"]
        lines.append(f"{name:<6} target {stats['target']:>5}, {s['runs']} runs: min / median / max "
                     f"{low:.2f} / {mid:.2f} / {high:.2f} s{note}; create requests/pod median {c[1]:.3f} "
                     f"(max {c[2]:.3f}); all requests/pod median {s['requests_per_pod'][1]:.3f}")
    if "ratio_of_medians" in stats:
        lines.append(f"ratio  target {stats['target']:>5}: Spark's median takes {stats['ratio_of_medians']:.1f}x "
                     "ours")
    return lines


def output_stem(args: argparse.Namespace) -> Path:
    where = "kubeconfig" if args.kubeconfig else args.backend
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    args.out_dir.mkdir(parents=True, exist_ok=True)
    return args.out_dir / f"allocator-{where}-{stamp}"


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "load_average": os.getloadavg()}


def write_record(path: Path, args: argparse.Namespace, results: list[Result], stats: list[dict[str, Any]],
                 steady_rates: dict[str, float]) -> None:
    """Every run with its timeline, the summaries and how they were made, so a reader can recompute them."""
    record = {
        "command": [sys.executable, *sys.argv],
        "run_id": RUN_ID,
        "where": str(args.kubeconfig) if args.kubeconfig else args.backend,
        "client": "create_api_client (default settings)" if args.kubeconfig else "bare ApiClient, 32 threads",
        "namespace": args.namespace,
        "machine": machine(),
        "settings": {name: asdict(s) for name, s in KINDS.items()},
        "summaries": stats,
        "steady_requests_per_minute": steady_rates,
        "runs": [asdict(r) for r in results],
    }
    path.write_text(json.dumps(record, indent=1))


def plot_timelines(path: Path, results: list[Result]) -> bool:
    """One row per target, ours beside Spark's: pods seen (dashed) and Running (solid) per run."""
    if pyplot is None:
        return False
    targets = sorted({r.target for r in results})
    names = [n for n in KINDS if any(r.name == n for r in results)]
    figure, axes = pyplot.subplots(len(targets), len(names), figsize=(6 * len(names), 4 * len(targets)),
                                   squeeze=False)
    for row, target in enumerate(targets):
        for col, name in enumerate(names):
            _plot_kind(axes[row][col], [r for r in results if r.target == target and r.name == name], name, target)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return True


def _plot_kind(ax: Any, runs: list[Result], name: str, target: int) -> None:
    for index, run in enumerate(runs):
        t = [p[0] for p in run.timeline]
        ax.plot(t, [p[2] for p in run.timeline], "--", color="tab:blue", alpha=0.7,
                label="pods seen (created)" if index == 0 else None)
        ax.plot(t, [p[3] for p in run.timeline], "-", color="tab:green", alpha=0.7,
                label="Running" if index == 0 else None)
    ax.axhline(target, color="grey", linewidth=0.5)
    ax.set_title(f"{name}: target {target} ({len(runs)} runs)")
    ax.set_xlabel("seconds since set_target")
    ax.set_ylabel("pods")
    ax.legend(loc="lower right")


# ---------------------------------------------------------------------------- main

async def measure_ramps(args: argparse.Namespace, results: list[Result]) -> None:
    """Every target, ``--repeat`` rounds, kinds alternating; appends to ``results`` as runs finish."""
    for target in args.targets:
        for round_ in range(args.repeat):
            for name in order_of(round_, args.skip_spark):
                result = await ramp(args, name, target, limit_for(args, name, target), round_)
                results.append(result)
                print(f"round {round_ + 1}/{args.repeat} {result.line()}", flush=True)


async def measure_steady(args: argparse.Namespace) -> dict[str, float]:
    rates: dict[str, float] = {}
    for name in order_of(0, args.skip_spark):
        rates[name] = await steady(args, name, 200)
        print(f"steady {name:<6} 200 executors: {rates[name]:.2f} API requests/min "
              f"(polling every {args.polling_interval:g} s, {args.steady_seconds:g} s measured)", flush=True)
    return rates


def server_url(kubeconfig: Path) -> str:
    """The API server's URL from the kubeconfig's current context, for the printed header."""
    configuration = k8s_client.Configuration()
    k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration,
                                persist_config=False)
    return configuration.host


async def check_server(args: argparse.Namespace) -> None:
    """Say what server this is and warn when its nodes cannot hold the largest target."""
    api = library_pod_api(args.kubeconfig, args.namespace)
    try:
        capacity = await pod_capacity(api)
        print(f"server {server_url(args.kubeconfig)}, namespace {args.namespace}, run label "
              f"{RUN_SELECTOR}, node pod capacity {capacity if capacity is not None else 'unknown'}", flush=True)
        if capacity is not None and capacity < max(args.targets):
            print(f"WARNING: the nodes hold {capacity} pods, fewer than the target {max(args.targets)}", flush=True)
    finally:
        await api.close()


def passed(stats: list[dict[str, Any]], steady_rates: dict[str, float]) -> bool:
    """Ours: median under the pass mark and <= 1.05 create requests per pod; steady <= 3 requests/min."""
    ok = True
    for s in stats:
        ours = s.get("ours")
        if ours is None:
            continue
        ok &= not ours["extrapolated"] and ours["seconds"][1] < LIMITS.get(s["target"], float("inf"))
        ok &= ours["create_requests_per_pod"][2] <= 1.05
    if "ours" in steady_rates:
        ok &= steady_rates["ours"] <= 3.0
    return ok


def report(args: argparse.Namespace, results: list[Result], steady_rates: dict[str, float]) -> list[dict[str, Any]]:
    """Print the summaries, write the JSON record and the PNG timeline, print their paths."""
    stats = [summary(results, t) for t in args.targets if any(r.target == t for r in results)]
    for s in stats:
        for line in summary_lines(s, args.spark_limit):
            print(line, flush=True)
    stem = output_stem(args)
    write_record(stem.with_suffix(".json"), args, results, stats, steady_rates)
    print(f"JSON record: {stem.with_suffix('.json')}", flush=True)
    if results and plot_timelines(stem.with_suffix(".png"), results):
        print(f"PNG timeline: {stem.with_suffix('.png')}", flush=True)
    elif results:
        print(f"PNG timeline: not written, matplotlib is not installed ({INSTALL_HINT})", flush=True)
    return stats


async def main(args: argparse.Namespace) -> int:
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    print(f"{args.backend} backend, targets {args.targets}, {args.repeat} rounds, {machine()['cpus']} cores, "
          f"load {machine()['load_average'][0]:.2f}", flush=True)
    if args.backend == "kubeconfig":
        await check_server(args)
    results: list[Result] = []
    steady_rates: dict[str, float] = {}
    try:
        await measure_ramps(args, results)
        if args.steady_seconds > 0:
            steady_rates = await measure_steady(args)
    finally:  # also on Ctrl-C / SIGTERM / failure: what was measured is still printed and recorded
        stats = report(args, results, steady_rates)
        if args.backend == "kubeconfig":
            left = await remove_run_pods(args.kubeconfig, args.namespace)
            print(f"pods of this run ({RUN_SELECTOR}) left on the server: {left}", flush=True)
    ok = passed(stats, steady_rates)
    print("targets met" if ok else "TARGETS MISSED", flush=True)
    return 0 if ok else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large", action="store_true", help="also measure 5000 pods")
    parser.add_argument("--targets", type=int, nargs="+", default=None,
                        help="pod counts to ramp to (default: 1000, and 5000 with --large)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per target, kinds alternating (default: 3)")
    parser.add_argument("--backend", choices=("embedded", "fake"), default="embedded")
    parser.add_argument("--kubeconfig", type=Path, default=None,
                        help="run against this API server instead (its pods are removed when done)")
    parser.add_argument("--namespace", default="default", help="namespace of the pods (default: default)")
    parser.add_argument("--skip-spark", action="store_true", help="do not run Spark's defaults for comparison")
    parser.add_argument("--spark-limit", type=float, default=240.0, help="give up on Spark's ramp after this many s")
    parser.add_argument("--ours-limit", type=float, default=None,
                        help="give up on our ramp after this many s (default: 4x the pass mark, at least 120 s)")
    parser.add_argument("--steady-seconds", type=float, default=60.0, help="0 skips the steady-state figure")
    parser.add_argument("--polling-interval", type=float, default=30.0)
    parser.add_argument("--fake-latency", type=float, default=0.005, help="seconds per request of the fake API")
    parser.add_argument("--out-dir", type=Path, default=Path(tempfile.gettempdir()) / "dask-k8s-bench",
                        help="where the JSON record and PNG timeline go")
    args = parser.parse_args(argv)
    if args.kubeconfig is not None:
        args.backend = "kubeconfig"
    args.targets = args.targets or ([1000, 5000] if args.large else [1000])
    if args.repeat < 1 or min(args.targets) < 1:
        parser.error("--repeat and --targets must be >= 1")
    return args


def run(argv: list[str] | None = None) -> int:
    """Exit 130 on Ctrl-C and 143 on SIGTERM, after the cleanup in ``main``'s context managers ran."""
    args = parse(argv)
    if pyplot is None:
        print(f"matplotlib is not installed: no PNG timeline ({INSTALL_HINT})", flush=True)
    try:
        return asyncio.run(main(args))
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C), after removing this run's pods", file=sys.stderr, flush=True)
        return 130
    except asyncio.CancelledError:
        print("stopped (SIGTERM), after removing this run's pods", file=sys.stderr, flush=True)
        return 143


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(run())
