"""Time to scale(N) with every worker registered: KubeSparkCluster vs dask-kubernetes' classic KubeCluster.

Both clusters run against the SAME separately started ``python -m dask_k8s_backend embedded`` server
(started here unless ``--kubeconfig`` names a running one), through its kubeconfig, one after the
other, alternating run after run. The peer is dask-kubernetes 2024.4.2 (the last release with the
classic KubeCluster) in local deploy mode: its scheduler runs in this process, like ours in client
mode. Target (issue 15): median ours <= 0.8x the peer's for scale(8).

    python -m venv --system-site-packages .venv && .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/peer.py [--workers 8] [--repeat 5] [--kinds ours peer peer-fork] [--kubeconfig PATH]

The bench extra (dask-kubernetes==2024.4.2, sniffio, matplotlib) goes in a venv of its own: with
dask-kubernetes installed, every ``dask worker`` imports its CLI plugin at start (see
:mod:`workerenv`). The server started here runs with the interpreter outside the venv
(``--server-python``), so the pods of both kinds run without it.

Same worker settings on both sides: image, 1 thread, ``--memory-limit 1GiB``, the same pod memory
(1 GiB + our 384 MiB overhead: requests = limits = 1408Mi) and cpu request (1), ``dask worker`` with
a nanny and ``--no-dashboard``. The peer's pod spec comes from its own ``make_pod_spec``, with one
change: its command ``dask-worker`` is replaced by ``dask worker``, because distributed no longer
installs a ``dask-worker`` script (a current image has none either; the embedded kubelet answers it
with ContainerCannotRun like containerd). Kinds: ``ours`` (KubeSparkCluster, ``k8s://`` + the
kubeconfig), ``peer`` (the classic KubeCluster as its users get it: distributed's default spawn for
the nanny's worker), ``peer-fork`` (the peer given the one worker default of ours it lacks,
``DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD=fork``, to show how much of the gap is that),
``ours-burst`` (ours with ``allocation.slow-start: false``: all pods in one round, as the peer
creates them, to show what the slow-start rounds cost).

An untimed warm-up round of every kind comes first (the server starts its warm runtime's template
on its first container; ``--no-warmup`` skips it). Each run is timed from the ``scale`` call until ``client.wait_for_workers(N)`` returns; the cluster is
then closed and the benchmark waits until the namespace has no pod left (deleting stragglers) before
the next run. It prints min / median / max per kind and the ratio of medians to the first kind
(``ours``), writes a JSON record with every run's timeline (pods created, Running, workers
registered) and, when matplotlib is importable, a PNG of the median run of each kind side by side.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import kubernetes
from distributed import Client

import timeline
import workerenv
from dask_k8s_backend import KubeSparkCluster

try:
    from dask_kubernetes.classic import KubeCluster, make_pod_spec
    from dask_kubernetes.common.auth import KubeConfig
except ImportError:  # reported by main() with the install command
    KubeCluster = None

logger = logging.getLogger(__name__)

TIMEOUT = 180
IMAGE = "ghcr.io/dask/dask:latest"
NAMESPACE = "default"
THREADS = 1
WORKER_MEMORY = "1GiB"        # what `dask worker --memory-limit` gets, both sides
POD_MEMORY = "1408Mi"         # ours: 1 GiB + max(384 MiB, 10 %) overhead; the peer's pods get the same
POD_CPU = "1"
FORK_ENV = {"DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD": "fork"}
ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the server
def start_server(kubeconfig: Path, warm_runtime: bool, python: str) -> subprocess.Popen:
    """``python -m dask_k8s_backend embedded`` in its own process, big enough for 8 workers; waits for its kubeconfig.

    ``python`` runs the server and so every pod (see :mod:`workerenv`); the server imports this
    checkout (``-m`` from its root).
    """
    env = {**os.environ}
    if not warm_runtime:
        env["DASK_K8S_BACKEND__EMBEDDED__WARM_RUNTIME"] = "false"
    kubeconfig.unlink(missing_ok=True)
    server = subprocess.Popen(
        [python, "-m", "dask_k8s_backend", "embedded", "--kubeconfig", str(kubeconfig),
         "--cpu", "16", "--memory", "32Gi"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env,
    )
    deadline = time.monotonic() + 60
    while not kubeconfig.exists():
        if server.poll() is not None:
            raise RuntimeError(f"the embedded server exited: {server.stdout.read()}")
        if time.monotonic() > deadline:
            server.kill()
            raise TimeoutError("the embedded server wrote no kubeconfig within 60 s")
        time.sleep(0.1)
    return server


def stop_server(server: subprocess.Popen) -> None:
    """SIGINT (its clean stop), then SIGKILL if it has not exited within 30 s."""
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=10)


def core_api(kubeconfig: Path) -> kubernetes.client.CoreV1Api:
    """A CoreV1Api of its own for the benchmark's watch and clean-up (not shared with either cluster)."""
    return kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(config_file=str(kubeconfig)))


def wait_no_pods(core: kubernetes.client.CoreV1Api, timeout: float = 60) -> int:
    """Wait until the namespace has no pod; stragglers are deleted (grace 0) after half the timeout.

    Why: a run must start on an empty node, and a cluster that leaves pods behind must not slow
    the next kind's run. Returns how many pods had to be deleted here.
    """
    deadline = time.monotonic() + timeout
    forced = 0
    while True:
        pods = core.list_namespaced_pod(NAMESPACE).items
        if not pods:
            return forced
        if time.monotonic() > deadline - timeout / 2 and not forced:
            for pod in pods:
                core.delete_namespaced_pod(pod.metadata.name, NAMESPACE, grace_period_seconds=0)
            forced = len(pods)
            logger.warning("%d pod(s) left after close were deleted by the benchmark", forced)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pods)} pod(s) still exist {timeout} s after close")
        time.sleep(0.2)


# --------------------------------------------------------------------------- the clusters
def ours(kubeconfig: Path, **config: Any) -> KubeSparkCluster:
    """KubeSparkCluster through ``k8s://`` and the server's kubeconfig, as against any real cluster."""
    return KubeSparkCluster(master="k8s://", namespace=NAMESPACE, image=IMAGE, worker_cores=THREADS,
                            worker_memory=WORKER_MEMORY, quiet=True, authenticate={"kubeconfig": str(kubeconfig)},
                            **config)


def peer_pod_spec(env: dict[str, str]) -> Any:
    """The peer's own ``make_pod_spec``, with ``dask worker`` for the removed ``dask-worker`` and our pod sizes."""
    pod = make_pod_spec(image=IMAGE, threads_per_worker=THREADS, memory_limit=POD_MEMORY, memory_request=POD_MEMORY,
                        cpu_request=POD_CPU, env=env)
    container = pod.spec.containers[0]
    args = list(container.args)
    if args[0] != "dask-worker":
        raise RuntimeError(f"dask-kubernetes' make_pod_spec changed its command: {args}")
    limit = args.index("--memory-limit")
    args[limit + 1] = WORKER_MEMORY
    container.args = ["dask", "worker", *args[1:], "--no-dashboard"]
    return pod


def peer(kubeconfig: Path, env: dict[str, str]) -> Any:
    """dask-kubernetes' classic KubeCluster in local deploy mode on the same server."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "The classic KubeCluster is going away"
        return KubeCluster(peer_pod_spec(env), deploy_mode="local", namespace=NAMESPACE,
                           auth=[KubeConfig(config_file=str(kubeconfig))], dashboard_address=":0")


KINDS: dict[str, Callable[[Path], Any]] = {
    "ours": ours,
    "ours-burst": lambda kubeconfig: ours(kubeconfig, allocation={"slow-start": False}),
    "peer": lambda kubeconfig: peer(kubeconfig, {}),
    "peer-fork": lambda kubeconfig: peer(kubeconfig, FORK_ENV),
}
LABELS = {"ours": "KubeSparkCluster (k8s://)", "ours-burst": "KubeSparkCluster, slow-start off",
          "peer": "dask-kubernetes classic (local mode)",
          "peer-fork": "dask-kubernetes classic + fork env"}


# --------------------------------------------------------------------------- one run
def time_scale(kind: str, n: int, kubeconfig: Path, core: kubernetes.client.CoreV1Api) -> dict:
    """Start the kind's cluster, time scale(n) until n workers registered, close, wait for zero pods."""
    with KINDS[kind](kubeconfig) as cluster, Client(cluster) as client:
        registrations = timeline.register(cluster)
        pods = timeline.PodWatch(core, NAMESPACE).start()
        try:
            started = time.time()
            t0 = time.perf_counter()
            cluster.scale(n)
            client.wait_for_workers(n, timeout=TIMEOUT)
            seconds = time.perf_counter() - t0
        finally:
            pods.stop()
    forced = wait_no_pods(core)
    return {"kind": kind, "workers": n, "seconds": seconds, "started": started, "pods_deleted_by_benchmark": forced,
            "timeline": timeline.record(started, pods, registrations)}


def warm_up(kinds: list[str], n: int, kubeconfig: Path, core: kubernetes.client.CoreV1Api) -> None:
    """One untimed round of every kind before the measured ones.

    Why: the server's warm container runtime starts its template (which imports distributed) on
    the first container it runs, and the first kind's first run would pay that one-time server
    cost (about 1 s on 2 cores); each client also imports its modules once.
    """
    for kind in kinds:
        seconds = time_scale(kind, n, kubeconfig, core)["seconds"]
        print(f"  warm-up    scale({n})  {LABELS[kind]:<38} {seconds:6.2f} s (not counted)", flush=True)


def measure(kinds: list[str], n: int, repeat: int, kubeconfig: Path, warmup: bool = True) -> list[dict]:
    """Every run as a record, in the order run: rounds of the kinds, alternating (after a warm-up round)."""
    core = core_api(kubeconfig)
    wait_no_pods(core)
    if warmup:
        warm_up(kinds, n, kubeconfig, core)
    runs = []
    for round_ in range(repeat):
        for kind in kinds:
            run = {"round": round_, **time_scale(kind, n, kubeconfig, core)}
            runs.append(run)
            line = run["timeline"]
            print(f"  round {round_ + 1}/{repeat}  scale({n})  {LABELS[kind]:<38} {run['seconds']:6.2f} s  "
                  f"(all created {_last(line['created'])}, all Running {_last(line['running'])}, "
                  f"first registered {_first(line['registered'])})", flush=True)
    return runs


def _last(times: list[float]) -> str:
    return f"{times[-1]:.2f} s" if times else "-"


def _first(times: list[float]) -> str:
    return f"{times[0]:.2f} s" if times else "-"


def summarize(runs: list[dict], kinds: list[str]) -> list[dict]:
    """min / median / max per kind and the first kind's median over its median (ours / peer: the issue's ratio)."""
    rows = []
    base = None
    for kind in kinds:
        times = [r["seconds"] for r in runs if r["kind"] == kind]
        median = statistics.median(times)
        base = median if base is None else base
        rows.append({"kind": kind, "runs": len(times), "min": min(times), "median": median, "max": max(times),
                     "first_kind_over_this": base / median})
    return rows


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=ROOT).stdout.strip() or None
    except OSError:
        return None


def print_table(rows: list[dict], kinds: list[str], repeat: int) -> None:
    """The table, then ours / each other kind (the issue's ratio: <= 0.8 is the target)."""
    print(f"\n{'kind':<38} {'min s':>6} {'median s':>8} {'max s':>6}  ({repeat} alternating runs)")
    for row in rows:
        print(f"{LABELS[row['kind']]:<38} {row['min']:>6.2f} {row['median']:>8.2f} {row['max']:>6.2f}")
    for row in rows[1:]:
        print(f"ratio of medians {kinds[0]} / {row['kind']}: {row['first_kind_over_this']:.2f}")


def write_png(runs: list[dict], kinds: list[str], n: int, path: str) -> bool:
    """The median run of each kind side by side; False when matplotlib is not importable."""
    panels = []
    for kind in kinds:
        of_kind = [r for r in runs if r["kind"] == kind]
        panels.append((LABELS[kind], {**timeline.median_run(of_kind), "of_runs": len(of_kind)}))
    return timeline.plot(panels, path, f"scale({n}) on one `python -m dask_k8s_backend embedded` server "
                                       f"until every worker registered")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=["ours", "peer"],
                        help="the first kind is the numerator of the ratios (default: ours peer)")
    parser.add_argument("--kubeconfig", help="a running embedded server's kubeconfig (default: start one)")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed first round of every kind")
    parser.add_argument("--server-python", default=workerenv.server_python(),
                        help="interpreter of the started server and its pods (default: outside the venv, if any)")
    parser.add_argument("--no-warm-runtime", action="store_true",
                        help="start the server with the warm container runtime off (every container exec'd)")
    stamp = time.strftime('%Y%m%dT%H%M%S')
    parser.add_argument("--json", default=f"/tmp/dask-k8s-peer-{stamp}.json")
    parser.add_argument("--png", default=f"/tmp/dask-k8s-peer-{stamp}.png")
    args = parser.parse_args()
    if KubeCluster is None:
        sys.exit("dask-kubernetes is not importable. Install the bench extra in a venv of its own and run with it: "
                 "python -m venv --system-site-packages .venv && .venv/bin/pip install -e '.[bench]' && "
                 ".venv/bin/python benchmarks/peer.py (docs/performance.md says why not in this environment)")
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("distributed", "dask_k8s_backend", "dask_kubernetes", "kopf", "asyncio", "tornado.application"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    server = None
    foreign = None if args.kubeconfig else workerenv.warn_foreign_commands(args.server_python)
    kubeconfig = Path(args.kubeconfig) if args.kubeconfig else Path(f"/tmp/dask-k8s-peer-{stamp}.kubeconfig")
    if not args.kubeconfig:
        server = start_server(kubeconfig, warm_runtime=not args.no_warm_runtime, python=args.server_python)
    try:
        runs = measure(args.kinds, args.workers, args.repeat, kubeconfig, warmup=not args.no_warmup)
    finally:
        if server is not None:
            stop_server(server)
    rows = summarize(runs, args.kinds)
    print_table(rows, args.kinds, args.repeat)
    record = {"benchmark": "peer", "command": "python benchmarks/peer.py " + " ".join(sys.argv[1:]),
              "commit": _commit(), "server": "given kubeconfig" if args.kubeconfig else "started by the benchmark",
              "warm_runtime": None if args.kubeconfig else not args.no_warm_runtime,
              "server_python": None if args.kubeconfig else args.server_python, "pods_dask_cli_plugins": foreign,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform()},
              "runs": runs, "summary": rows}
    Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nJSON record: {args.json}")
    if write_png(runs, args.kinds, args.workers, args.png):
        print(f"PNG timeline: {args.png}")
    else:
        print("PNG timeline skipped: matplotlib is not importable (pip install matplotlib, or pip install -e '.[bench]')")


if __name__ == "__main__":
    main()
