"""Time to scale(4) and scale(8) with every worker registered: KubeSparkCluster vs LocalCluster.

Both clusters start worker processes on this machine with the same settings (1 thread, 1 GiB,
a nanny), so the ratio is what the Kubernetes layers cost: API calls, the embedded kubelet,
watch latency, registration gatekeeping. Target: ratio <= 1.25.

    python benchmarks/scale.py [--repeat 3] [--sizes 4 8]

Figures are medians of ``--repeat`` runs; the two kinds alternate so machine noise hits both.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from typing import Callable

from distributed import Client, LocalCluster

from dask_k8s_backend import KubeSparkCluster

TIMEOUT = 180
# One embedded node large enough for 8 workers of 1 GiB (+ Spark-style overhead) and 1 cpu each.
MASTER = "embedded://?cpu=16&memory=32Gi"


def _wait_registered(client: Client, n: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while len(client.scheduler_info(n_workers=-1)["workers"]) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{n} workers did not register within {TIMEOUT} s")
        time.sleep(0.02)


def time_scale_kube(n: int) -> float:
    with KubeSparkCluster(master=MASTER, worker_cores=1, worker_memory="1GiB", quiet=True) as cluster, Client(cluster) as client:
        t0 = time.perf_counter()
        cluster.scale(n)
        _wait_registered(client, n)
        return time.perf_counter() - t0


def time_scale_local(n: int) -> float:
    with LocalCluster(n_workers=0, threads_per_worker=1, memory_limit="1GiB", processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        t0 = time.perf_counter()
        cluster.scale(n)
        _wait_registered(client, n)
        return time.perf_counter() - t0


def measure(sizes: list[int], repeat: int) -> dict[tuple[str, int], list[float]]:
    runs: dict[tuple[str, int], list[float]] = {}
    kinds: dict[str, Callable[[int], float]] = {"LocalCluster": time_scale_local, "KubeSparkCluster": time_scale_kube}
    for _ in range(repeat):
        for n in sizes:
            for name, fn in kinds.items():
                runs.setdefault((name, n), []).append(fn(n))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for noisy in ("distributed", "dask_k8s_backend"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    runs = measure(args.sizes, args.repeat)
    print(f"{'workers':>7}  {'LocalCluster s':>14}  {'KubeSparkCluster s':>18}  {'ratio':>6}  (median of {args.repeat})")
    for n in args.sizes:
        local = statistics.median(runs[("LocalCluster", n)])
        kube = statistics.median(runs[("KubeSparkCluster", n)])
        print(f"{n:>7}  {local:>14.2f}  {kube:>18.2f}  {kube / local:>6.2f}")


if __name__ == "__main__":
    main()
