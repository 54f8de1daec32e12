"""Time to scale(N) with every worker registered: KubeSparkCluster vs LocalCluster, run after run.

Both clusters start worker processes on this machine with the same settings (1 thread, 1 GiB,
a nanny), so the ratio is what the Kubernetes layers cost: API calls, the embedded kubelet and
its container runtime, watch latency, registration gatekeeping. Target: median ratio <= 1.0
for scale(8) against LocalCluster(processes=True).

    python benchmarks/scale.py [--repeat 3] [--sizes 4 8] [--kinds local kube kube-exec] [--json PATH]

Kinds: ``local`` (LocalCluster), ``kube`` (KubeSparkCluster on the embedded default, warm
container runtime on), ``kube-exec`` (the same with ``k8s-backend.embedded.warm-runtime: false``:
every container exec'd). Each round runs every kind once per size, alternating, so machine
noise hits all of them; the table shows min / median / max per kind and the ratio of each
medians to ``local``'s. Every run is also written as a JSON record (default under /tmp) with its
timeline (pods created, pods Running, workers registered, in seconds after the ``scale`` call), and
the median run of each kind at the largest size is drawn side by side as a PNG when matplotlib is
importable (``pip install matplotlib`` or ``pip install -e '.[bench]'``). LocalCluster has no pods:
its panel shows registrations only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import dask.config
import kubernetes
from distributed import Client, LocalCluster

import timeline
import workerenv
from dask_k8s_backend import KubeSparkCluster
from dask_k8s_backend.embedded.node.process.warm import CONFIG_KEY as WARM_RUNTIME_KEY

TIMEOUT = 180
# One embedded node large enough for 8 workers of 1 GiB (+ Spark-style overhead) and 1 cpu each.
MASTER = "embedded://?cpu=16&memory=32Gi"


def _wait_registered(client: Client, n: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while len(client.scheduler_info(n_workers=-1)["workers"]) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{n} workers did not register within {TIMEOUT} s")
        time.sleep(0.02)


def _pod_watch(cluster: KubeSparkCluster) -> timeline.PodWatch:
    """A pod watch on the cluster's embedded server through an ApiClient of its own.

    Why not the cluster's client: its rate limiter and connection pool belong to the allocator
    being measured; a second client with the same configuration (address, CA, token) shares neither.
    """
    api = kubernetes.client.ApiClient(cluster.connection.api_client.configuration)
    return timeline.PodWatch(kubernetes.client.CoreV1Api(api), cluster.app.namespace).start()


def _time_scale(cluster: Any, client: Client, n: int, pods: timeline.PodWatch | None) -> dict:
    """scale(n) until n workers registered: the seconds and the run's timeline."""
    registrations = timeline.register(cluster)
    try:
        started = time.time()
        t0 = time.perf_counter()
        cluster.scale(n)
        _wait_registered(client, n)
        seconds = time.perf_counter() - t0
    finally:
        if pods is not None:
            pods.stop()
    return {"seconds": seconds, "started": started, "timeline": timeline.record(started, pods, registrations)}


def time_scale_kube(n: int, warm_runtime: bool = True) -> dict:
    with dask.config.set({WARM_RUNTIME_KEY: warm_runtime}):
        with KubeSparkCluster(master=MASTER, worker_cores=1, worker_memory="1GiB", quiet=True) as cluster, \
                Client(cluster) as client:
            return _time_scale(cluster, client, n, _pod_watch(cluster))


def time_scale_local(n: int) -> dict:
    with LocalCluster(n_workers=0, threads_per_worker=1, memory_limit="1GiB", processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        return _time_scale(cluster, client, n, None)


KINDS: dict[str, Callable[[int], dict]] = {
    "local": time_scale_local,
    "kube": time_scale_kube,
    "kube-exec": lambda n: time_scale_kube(n, warm_runtime=False),
}
LABELS = {"local": "LocalCluster(processes=True)", "kube": "KubeSparkCluster (warm runtime)",
          "kube-exec": "KubeSparkCluster (warm runtime off)"}


def measure(kinds: list[str], sizes: list[int], repeat: int) -> list[dict]:
    """Every run as a record, in the order run: rounds of (size, kind) alternating."""
    runs = []
    for round_ in range(repeat):
        for n in sizes:
            for kind in kinds:
                run = {"round": round_, "kind": kind, "workers": n, **KINDS[kind](n)}
                runs.append(run)
                print(f"  round {round_ + 1}/{repeat}  scale({n})  {LABELS[kind]:<36} {run['seconds']:6.2f} s"
                      f"{_phases(run['timeline'])}", flush=True)
    return runs


def _at(times: list[float], i: int) -> str:
    return f"{times[i]:.2f} s" if times else "-"


def _phases(line: dict[str, list[float]]) -> str:
    """When the last pod was created and Running and the first worker registered (pods: kube kinds only)."""
    return (f"  (all created {_at(line['created'], -1)}, all Running {_at(line['running'], -1)}, "
            f"first registered {_at(line['registered'], 0)})")


def write_png(runs: list[dict], kinds: list[str], n: int, path: str) -> bool:
    """The median run of each kind at size n side by side; False when matplotlib is not importable."""
    panels = []
    for kind in kinds:
        of_kind = [r for r in runs if r["kind"] == kind and r["workers"] == n]
        panels.append((LABELS[kind], {**timeline.median_run(of_kind), "of_runs": len(of_kind)}))
    return timeline.plot(panels, path, f"scale({n}) until every worker registered (LocalCluster has no pods)")


def summarize(runs: list[dict], kinds: list[str], sizes: list[int]) -> list[dict]:
    """min / median / max per (kind, size) and the ratio of its median to the first kind's."""
    rows = []
    for n in sizes:
        base = None
        for kind in kinds:
            times = [r["seconds"] for r in runs if r["kind"] == kind and r["workers"] == n]
            median = statistics.median(times)
            base = median if base is None else base
            rows.append({"kind": kind, "workers": n, "runs": len(times), "min": min(times), "median": median,
                         "max": max(times), "ratio_of_medians": median / base})
    return rows


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=["local", "kube"],
                        help="the first kind is the baseline of the ratios (default: local kube)")
    stamp = time.strftime('%Y%m%dT%H%M%S')
    parser.add_argument("--json", default=f"/tmp/dask-k8s-scale-{stamp}.json",
                        help="where to write every run and the summary")
    parser.add_argument("--png", default=f"/tmp/dask-k8s-scale-{stamp}.png",
                        help="where to draw the timeline of the largest size (needs matplotlib)")
    args = parser.parse_args()
    for noisy in ("distributed", "dask_k8s_backend"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    foreign = workerenv.warn_foreign_commands(sys.executable)  # the kube kinds' pods run this interpreter
    runs = measure(args.kinds, args.sizes, args.repeat)
    rows = summarize(runs, args.kinds, args.sizes)
    print(f"\n{'workers':>7}  {'kind':<36} {'min s':>6} {'median s':>8} {'max s':>6}  ratio of medians "
          f"(to {args.kinds[0]}; {args.repeat} alternating runs)")
    for row in rows:
        print(f"{row['workers']:>7}  {LABELS[row['kind']]:<36} {row['min']:>6.2f} {row['median']:>8.2f} "
              f"{row['max']:>6.2f}  {row['ratio_of_medians']:.2f}")
    record = {"benchmark": "scale", "command": "python benchmarks/scale.py " + " ".join(sys.argv[1:]),
              "commit": _commit(), "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                              "platform": platform.platform()},
              "pods_dask_cli_plugins": foreign, "runs": runs, "summary": rows}
    Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nJSON record: {args.json}")
    if write_png(runs, args.kinds, max(args.sizes), args.png):
        print(f"PNG timeline: {args.png}")
    else:
        print("PNG timeline skipped: matplotlib is not importable (pip install matplotlib, or pip install -e '.[bench]')")


if __name__ == "__main__":
    main()
