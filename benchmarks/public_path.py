#!/usr/bin/env python
"""The public path: ramp to N Running simulated pods through ``k8s://`` against a separate API server.

Why: ``benchmarks/allocator.py`` runs the API server in its own process with a bare ApiClient, so
its figure is not what a user of ``KubeSparkCluster(master="k8s://")`` gets. This script measures,
alternating the kinds in each repetition:

* ``inproc``: the backend core (``allocator.Backend``) against an ``EmbeddedKubernetes`` started in
  this process, with ``allocator.py``'s bare ApiClient (the reference figure);
* ``k8s``: the same backend core against ``python -m dask_k8s_backend embedded --kubelet simulated``
  started as a separate process, with the ApiClient that ``k8s://`` builds (kubeconfig, HTTPS,
  token, ``create_api_client`` with the default settings: rate limit, retries, timeouts) and the
  ``KubePodApi`` that ``build_components`` builds;
* ``cluster``: ``KubeSparkCluster(master="k8s://")`` itself against a separate server, ``scale(N)``,
  Running counted in the backend's own pod snapshots every 0.05 s (``--observe backend``, no request,
  as ``allocator.py`` counts), or with one raw-JSON LIST every 0.5 s (``--observe list``, how issue 15
  measured it; decoding those LISTs takes a quarter of this process' CPU during the ramp).

It prints min / median / max per kind and target, the ratio of medians to ``inproc``, the API
requests per pod, and writes a JSON record (``--json``).

    python benchmarks/public_path.py                          # 1000 pods, every kind, 3 runs each
    python benchmarks/public_path.py --targets 1000 5000 --repeat 3
    python benchmarks/public_path.py --set api.rate-limit=always   # the client-side rate limit on every request (before)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from allocator import OURS, Backend, pod_api  # noqa: E402  (the reference wiring, reused unchanged)

from dask_k8s_backend.config import load_settings  # noqa: E402
from dask_k8s_backend.kube.master import KubernetesClusterManager  # noqa: E402
from dask_k8s_backend.kube.pod_api import KubePodApi  # noqa: E402

logger = logging.getLogger(__name__)

PODS_PER_NODE = 110  # the embedded CLI's node capacity in pods (EmbeddedKubernetes' default)
SERVER_START_LIMIT = 60.0


@dataclass
class Run:
    kind: str
    target: int
    seconds: float | None
    running: int
    requests: int
    creates: int

    def line(self) -> str:
        took = f"{self.seconds:6.2f} s" if self.seconds is not None else f"not reached ({self.running} Running)"
        pods = max(1, self.running)
        return (f"{self.kind:<8} {self.target:>5} pods: {took}; requests/pod {self.requests / pods:.3f}, "
                f"creates/pod {self.creates / pods:.3f}")


# ---------------------------------------------------------------------------- the separate server

@contextlib.contextmanager
def separate_server(pods: int, workdir: Path) -> Iterator[Path]:
    """A ``python -m dask_k8s_backend embedded`` process with room for ``pods``; yields its kubeconfig."""
    kubeconfig = workdir / f"kubeconfig-{time.monotonic_ns()}"
    nodes = max(1, -(-pods // PODS_PER_NODE))
    command = [sys.executable, "-m", "dask_k8s_backend", "embedded", "--kubeconfig", str(kubeconfig),
               "--kubelet", "simulated", "--nodes", str(nodes), "--cpu", "1000", "--memory", "1000Gi"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_file(kubeconfig, process)
        yield kubeconfig
    finally:
        _stop(process)


def _wait_for_file(path: Path, process: subprocess.Popen) -> None:
    """The CLI writes the kubeconfig (renamed into place) once the server answers."""
    deadline = time.monotonic() + SERVER_START_LIMIT
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the embedded server did not start: {process.stderr.read() if process.stderr else ''}")
        time.sleep(0.05)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (the CLI stops its kubelets and server), SIGKILL if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


#: ``--set key=value`` settings overrides (``k8s-backend.`` keys without the prefix), for trying options.
OVERRIDES: dict[str, Any] = {}
#: How the cluster kind sees Running pods: "backend" (its own snapshots) or "list" (a LIST every 0.5 s).
OBSERVE = "backend"


def public_connection(kubeconfig: Path) -> Any:
    """The ApiClient ``k8s://`` builds from the kubeconfig, with the default settings (and ``--set``)."""
    os.environ["KUBECONFIG"] = str(kubeconfig)
    return KubernetesClusterManager().connect("k8s://", load_settings(OVERRIDES)).api_client


# ---------------------------------------------------------------------------- the kinds

@contextlib.asynccontextmanager
async def public_pod_api(target: int, workdir: Path) -> AsyncIterator[KubePodApi]:
    """``KubePodApi`` as ``build_components`` builds it, over the ``k8s://`` client."""
    settings = load_settings(OVERRIDES)
    with separate_server(target, workdir) as kubeconfig:
        client = public_connection(kubeconfig)
        api = KubePodApi(client, "default", request_timeout=settings.api.request_timeout,
                         connect_timeout=settings.api.connection_timeout)
        try:
            yield api
        finally:
            await api.close()
            client.close()


async def ramp_backend(kind: str, target: int, workdir: Path) -> Run:
    """The backend core (allocator, watch, polling, lifecycle) from 0 to ``target`` Running."""
    opened = pod_api("embedded", target) if kind == "inproc" else public_pod_api(target, workdir)
    async with opened as api:
        backend = Backend(api, OURS)
        await backend.start()
        try:
            seconds = await backend.reach(target, limit=target * 0.06 + 30)
            return Run(kind, target, seconds, backend.running(), backend.api.total(), backend.api.counts["create_pod"])
        finally:
            await backend.stop()


async def ramp_cluster(target: int, workdir: Path) -> Run:
    """``KubeSparkCluster(master="k8s://").scale(target)`` until ``target`` pods are Running."""
    with separate_server(target, workdir) as kubeconfig, _count_requests() as counter:
        os.environ["KUBECONFIG"] = str(kubeconfig)
        return await _scale_cluster(kubeconfig, counter, target)


async def _scale_cluster(kubeconfig: Path, counter: _RequestCounter, target: int) -> Run:
    """One ``scale(target)`` of a fresh KubeSparkCluster, timed from the call."""
    from dask_k8s_backend import KubeSparkCluster

    async with KubeSparkCluster(master="k8s://", asynchronous=True, quiet=True, **_cluster_kwargs()) as cluster:
        reader = public_connection(kubeconfig)
        try:
            before = counter.total
            started = time.monotonic()
            await cluster.scale(target)
            limit = target * 0.06 + 30
            if OBSERVE == "list":
                seconds, running = await _poll_running(reader, target, started, limit)
            else:
                seconds, running = await _watch_backend(cluster, target, started, limit)
            return Run("cluster", target, seconds, running, counter.total - before, counter.creates)
        finally:
            reader.close()


def _cluster_kwargs() -> dict[str, Any]:
    """``--set`` overrides as KubeSparkCluster's keyword arguments (dotted keys are taken as they are)."""
    return dict(OVERRIDES)


class _RequestCounter:
    """Request counts from many API threads (a bare ``+=`` from 16 threads loses increments)."""

    def __init__(self) -> None:
        self.total = 0
        self.creates = 0
        self.lock = threading.Lock()

    def add(self, method: str, url: str) -> None:
        with self.lock:
            self.total += 1
            self.creates += method == "POST" and url.rstrip("/").endswith("/pods")


@contextlib.contextmanager
def _count_requests() -> Iterator[_RequestCounter]:
    """Counts every request any ``ResilientRESTClient`` in this process sends (reader's LISTs excluded)."""
    from dask_k8s_backend.kube.client import ResilientRESTClient

    counter = _RequestCounter()
    original = ResilientRESTClient.request

    def counted(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if not getattr(self, "benchmark_reader", False):
            counter.add(method, url)
        return original(self, method, url, *args, **kwargs)

    ResilientRESTClient.request = counted  # type: ignore[method-assign]
    try:
        yield counter
    finally:
        ResilientRESTClient.request = original  # type: ignore[method-assign]


async def _watch_backend(cluster: Any, target: int, started: float, limit: float) -> tuple[float | None, int]:
    """Seconds from ``started`` until the scheduler plugin's pod snapshots show ``target`` Running."""
    from dask_k8s_backend.pods.states import PodRunning

    store = cluster.scheduler.plugins["k8s-backend"].components.store
    running = 0
    while time.monotonic() - started < limit:
        running = sum(1 for s in store.current.executor_pods.values() if isinstance(s, PodRunning))
        if running >= target:
            return time.monotonic() - started, running
        await asyncio.sleep(0.05)
    return None, running


async def _poll_running(api_client: Any, target: int, started: float, limit: float) -> tuple[float | None, int]:
    """Seconds from ``started`` until one raw LIST shows ``target`` Running pods (every 0.5 s)."""
    from kubernetes import client as k8s

    api_client.rest_client.benchmark_reader = True
    core = k8s.CoreV1Api(api_client)
    running = 0
    while time.monotonic() - started < limit:
        response = await asyncio.to_thread(core.list_namespaced_pod, "default", field_selector="status.phase=Running",
                                           _preload_content=False)
        running = len(json.loads(response.data)["items"])
        if running >= target:
            return time.monotonic() - started, running
        await asyncio.sleep(0.5)
    return None, running


async def one_run(kind: str, target: int, workdir: Path) -> Run:
    if kind == "cluster":
        return await ramp_cluster(target, workdir)
    return await ramp_backend(kind, target, workdir)


# ---------------------------------------------------------------------------- report

def summary(runs: list[Run], kinds: list[str], target: int) -> dict[str, Any]:
    """min / median / max per kind, and each median's ratio to the first kind's median."""
    out: dict[str, Any] = {}
    for kind in kinds:
        times = [r.seconds for r in runs if r.kind == kind and r.target == target and r.seconds is not None]
        if times:
            out[kind] = {"min": min(times), "median": statistics.median(times), "max": max(times), "runs": len(times)}
    base = out.get(kinds[0], {}).get("median")
    for kind, figures in out.items():
        figures["ratio_to_" + kinds[0]] = figures["median"] / base if base else None
    return out


def print_summary(figures: dict[str, Any], target: int, base: str) -> None:
    for kind, f in figures.items():
        print(f"{kind:<8} {target:>5} pods: min {f['min']:.2f} / median {f['median']:.2f} / max {f['max']:.2f} s "
              f"({f['runs']} runs), median / {base} median = {f['ratio_to_' + base]:.2f}", flush=True)


def order_of(repeat: int, kinds: list[str]) -> list[str]:
    """ABBA: every other repetition runs the kinds in reverse, so a load that drifts hits all of them."""
    return list(kinds) if repeat % 2 == 0 else list(reversed(kinds))


async def main(args: argparse.Namespace) -> int:
    global OBSERVE
    OVERRIDES.update(dict(item.split("=", 1) for item in args.set))
    OBSERVE = args.observe
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="public-path-") as tmp:
        for target in args.targets:
            for repeat in range(args.repeat):
                for kind in order_of(repeat, args.kinds):
                    run = await one_run(kind, target, Path(tmp))
                    runs.append(run)
                    print(run.line(), flush=True)
    record = {"command": " ".join(sys.argv), "overrides": OVERRIDES, "observe": OBSERVE, "cpus": os.cpu_count(), "runs": [asdict(r) for r in runs],
              "summary": {str(t): summary(runs, args.kinds, t) for t in args.targets}}
    for target in args.targets:
        print_summary(record["summary"][str(target)], target, args.kinds[0])
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))
        print(f"JSON record: {args.json}")
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, nargs="+", default=[1000])
    parser.add_argument("--kinds", nargs="+", choices=("inproc", "k8s", "cluster"), default=["inproc", "k8s", "cluster"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default=f"/tmp/dask-k8s-public-path-{time.strftime('%Y%m%dT%H%M%S')}.json",
                        help="where to write the JSON record ('' skips it); by default under /tmp, not the checkout")
    parser.add_argument("--observe", choices=("backend", "list"), default="backend",
                        help="how the cluster kind counts Running pods")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a k8s-backend setting for the k8s and cluster kinds, e.g. api.qps=1000")
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(asyncio.run(main(parse())))
