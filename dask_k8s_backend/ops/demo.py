"""``python -m dask_k8s_backend demo``: the whole story in under a minute.

Start a KubeSparkCluster (embedded Kubernetes by default), scale to N workers while showing
the pods' progress, run real computations whose results are checked, let adaptive scaling
take the idle cluster back to zero, print what happened, and close leaving no pod behind.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable
from ..cluster.kube_spark_cluster import KubeSparkCluster

POLL = 0.1


@dataclass
class DemoReport:
    """What the demo measured; printed as a table at the end."""

    master: str = ""
    start_seconds: float = 0.0
    scale_seconds: float = 0.0
    ready_after: dict[str, float] = field(default_factory=dict)
    results: list[tuple[str, str, bool]] = field(default_factory=list)
    adapt_seconds: float = 0.0
    pods_created: int = 0
    pods_left: int = -1
    close_seconds: float = 0.0

    def ok(self) -> bool:
        return all(ok for _, _, ok in self.results) and self.pods_left == 0

    def table(self) -> str:
        rows = [
            ("master", self.master),
            ("cluster started in", f"{self.start_seconds:.1f} s"),
            (f"scale({len(self.ready_after)}) all registered in", f"{self.scale_seconds:.1f} s"),
            *((f"  executor {k} ready after", f"{v:.1f} s") for k, v in sorted(self.ready_after.items(), key=lambda kv: int(kv[0]))),
            *((f"result: {name}", f"{value} ({'correct' if ok else 'WRONG'})") for name, value, ok in self.results),
            ("adapt back to 0 workers in", f"{self.adapt_seconds:.1f} s"),
            ("pods created", str(self.pods_created)),
            ("close took", f"{self.close_seconds:.1f} s"),
            ("pods left after close", str(self.pods_left)),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"demo: {what} did not happen within {timeout:.0f} s")
        time.sleep(POLL)


def _scale_with_progress(cluster, n: int, report: DemoReport, say: Callable[[str], None]) -> None:
    t0 = time.monotonic()
    cluster.scale(n)
    last = None
    deadline = t0 + 120
    while True:
        status = cluster.refresh_status()
        workers = {str(d["name"]) for d in cluster.scheduler_info.get("workers", {}).values()}
        for name in workers:
            report.ready_after.setdefault(name, time.monotonic() - t0)
        counts = dict(sorted(status.phase_counts().items()))
        line = f"  pods {counts or '{}'}  workers registered {len(workers)}/{n}"
        if line != last:
            say(f"[{time.monotonic() - t0:5.1f}s]{line}")
            last = line
        if status.error:
            raise RuntimeError(f"demo: the cluster stopped creating pods: {status.error}")
        if len(workers) >= n:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"demo: {n} workers did not register within 120 s; {status.pending_reasons}")
        time.sleep(POLL)
    report.scale_seconds = time.monotonic() - t0


def _compute(client, report: DemoReport, say: Callable[[str], None]) -> None:
    import dask.array as da
    import dask.bag as db

    n = 20_000_000
    total = da.arange(n, chunks=n // 16).sum().compute()
    expected = n * (n - 1) // 2
    report.results.append(("sum(arange(2e7))", str(int(total)), int(total) == expected))
    say(f"  sum of 0..{n - 1} = {int(total)}")

    x = da.ones((4000, 4000), chunks=(500, 500))
    value = float((x + x.T).mean().compute())
    report.results.append(("mean(ones + ones.T)", f"{value:g}", value == 2.0))
    say(f"  mean of a 4000x4000 array expression = {value:g}")

    words = db.from_sequence(["kubernetes", "dask", "spark", "dask"] * 2500, npartitions=8)
    counts = dict(words.frequencies().compute())
    report.results.append(("word counts", str(counts), counts == {"kubernetes": 2500, "dask": 5000, "spark": 2500}))
    where = client.run(lambda: __import__("os").environ.get("DASK_K8S_EXECUTOR_ID"))
    say(f"  tasks ran on executors {sorted(where.values(), key=lambda v: int(v or 0))}")


def run_demo(master: str | None = None, workers: int = 4, quiet: bool = False) -> DemoReport:
    """Run the demo and return its report (raises if anything is wrong)."""
    from distributed import Client

    say = (lambda _msg: None) if quiet else print
    for noisy in ("distributed", "dask_k8s_backend"):  # the demo prints its own story
        logging.getLogger(noisy).setLevel(logging.WARNING)
    report = DemoReport()
    t0 = time.monotonic()
    say("Starting KubeSparkCluster" + (f" on {master}" if master else " on the embedded Kubernetes") + " ...")
    cluster = KubeSparkCluster(master=master, name="demo", quiet=True)
    report.master = cluster.settings.master
    report.start_seconds = time.monotonic() - t0
    try:
        with Client(cluster) as client:
            say(f"Scaling to {workers} workers (pods are processes on the embedded kubelet):")
            _scale_with_progress(cluster, workers, report, say)
            say("Computing:")
            _compute(client, report, say)
            say(cluster.status_table)
            say("Adaptive scaling (minimum 0): the idle cluster scales back to zero ...")
            t1 = time.monotonic()
            cluster.adapt(minimum=0, maximum=workers, interval="300ms", wait_count=2)
            _wait(lambda: not cluster.scheduler_info["workers"] and not cluster.refresh_status().alive(), 60, "scale to 0")
            report.adapt_seconds = time.monotonic() - t1
            report.pods_created = cluster.refresh_status().pods_created
    finally:
        t2 = time.monotonic()
        cluster.close()
        report.close_seconds = time.monotonic() - t2
        report.pods_left = cluster.pods_left_after_close
    say("")
    say(report.table())
    say("OK: results correct, nothing left behind" if report.ok() else "FAILED")
    return report


def main(master: str | None = None, workers: int = 4, quiet: bool = False) -> int:
    report = run_demo(master=master, workers=workers, quiet=quiet)
    return 0 if report.ok() else 1
