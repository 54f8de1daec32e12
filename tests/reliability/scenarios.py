"""Chaos scenarios on the embedded Kubernetes, shared by tests/reliability and ``ci/chaos.py``.

Each scenario runs a real KubeSparkCluster (client mode, ``k8s://`` + kubeconfig) against an
``EmbeddedKubernetes`` started by the caller, injects its faults on a schedule drawn from a
seeded ``random.Random`` (reproducible timing and victims), and returns a report of figures;
the tests assert on the reports, ``ci/chaos.py`` prints them. Oracles read the embedded store
directly (a listener records every pod creation), never through the faulty API.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil

from k8s_helpers import wait_until as _wait_until

from dask_k8s_backend import labels

WORKER_ENV_APP = "DASK_K8S_APP_ID"
WORKER_ENV_ID = "DASK_K8S_EXECUTOR_ID"
ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------- helpers

def cluster_kwargs(kube: Any, **extra: Any) -> dict[str, Any]:
    """A small, fast KubeSparkCluster on the embedded server (sections merged with ``extra``)."""
    kwargs: dict[str, Any] = dict(
        master=f"k8s://{kube.url}",
        worker_memory="512MiB",
        quiet=True,
        authenticate={"kubeconfig": kube.kubeconfig},
        executor={"delete-grace-period": "2s", "api-polling-interval": "5s"},
        worker={"death-timeout": "20s"},
    )
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(kwargs.get(key), dict):
            kwargs[key] = {**kwargs[key], **value}
        else:
            kwargs[key] = value
    return kwargs


def app_pods(kube: Any, app_id: str, namespace: str = "default") -> list[dict]:
    """The app's pods as the store holds them (never affected by injected faults)."""
    items, _, _ = kube.store.list("pods", namespace, label_selector=f"{labels.APP_ID}={app_id}")
    return items


wait_until = partial(_wait_until, interval=0.1)  # the shared poll-with-deadline, at this module's pace


def live_pods(kube: Any, app_id: str) -> list[dict]:
    """Running pods not being deleted."""
    return [p for p in app_pods(kube, app_id)
            if p.get("status", {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]


@dataclass
class PodCreations:
    """Store listener: every worker pod ADDED, in order, as (app id, executor id, pod name)."""

    created: list[tuple[str, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, event: str, obj: dict) -> None:
        meta = obj.get("metadata") or {}
        pod_labels = meta.get("labels") or {}
        if event == "ADDED" and labels.EXECUTOR_ID in pod_labels and "containers" in (obj.get("spec") or {}):
            with self.lock:
                self.created.append((pod_labels.get(labels.APP_ID, ""), pod_labels[labels.EXECUTOR_ID],
                                     meta.get("name", "")))

    def for_app(self, app_id: str) -> list[str]:
        with self.lock:
            return [executor for app, executor, _ in self.created if app == app_id]


def worker_processes(app_id: str | None = None, executor_id: str | None = None) -> list[psutil.Process]:
    """Container processes (nanny and worker) of our worker pods, filtered by app and executor."""
    found = []
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        try:
            env = proc.environ()
        except psutil.Error:
            continue
        if WORKER_ENV_APP in env and app_id in (None, env[WORKER_ENV_APP]) \
                and executor_id in (None, env.get(WORKER_ENV_ID)):
            found.append(proc)
    return found


def sigkill_executor(app_id: str, executor_id: str) -> int:
    """SIGKILL every process of one executor's container (as the OOM killer or a crash would)."""
    killed = 0
    for proc in worker_processes(app_id, executor_id):
        try:
            proc.kill()
            killed += 1
        except psutil.Error:
            continue
    return killed


def registered_ids(cluster: Any) -> set[str]:
    """Executor ids (worker names) registered with the in-process scheduler."""
    return {str(ws.name) for ws in list(cluster.scheduler.workers.values())}


def at_target(kube: Any, cluster: Any, target: int) -> bool:
    """Exactly ``target`` live pods, and every one of them a registered worker."""
    live = {p["metadata"]["labels"][labels.EXECUTOR_ID] for p in live_pods(kube, cluster.app.app_id)}
    return len(live) == target and live <= registered_ids(cluster) and len(registered_ids(cluster)) == target


def slow_square_task(delay: float) -> Callable[[int], int]:
    """A task function local to a call: pickled by value, as workers cannot import the tests."""
    def slow_square(x: int) -> int:
        time.sleep(delay)
        return x * x
    return slow_square


# ---------------------------------------------------------------------------- scenario 1: kills

KILL_METHODS = ("api-delete", "kubectl-delete", "sigkill")


@dataclass
class KillReport:
    target: int
    kills: list[tuple[float, str, str]] = field(default_factory=list)  # (seconds from start, method, executor)
    result_correct: bool = False
    pods_created: int = 0
    executor_ids_reused: list[str] = field(default_factory=list)
    recovery_seconds: float = float("nan")  # last kill -> live pods == registered workers == target
    pods_leaked: int = -1


def _count_pods(report: Any, kube: Any, creations: Any, app_id: str) -> None:
    """After close: what leaked, how many pods the app created, and any executor id used twice."""
    report.pods_leaked = len(app_pods(kube, app_id))
    ids = creations.for_app(app_id)
    report.pods_created = len(ids)
    report.executor_ids_reused = sorted({i for i in ids if ids.count(i) > 1})


def _kill_one(kube: Any, cluster: Any, rng: random.Random, method: str, core_api: Any) -> str | None:
    candidates = sorted(live_pods(kube, cluster.app.app_id), key=lambda p: p["metadata"]["name"])
    if not candidates:
        return None
    pod = rng.choice(candidates)
    name, executor = pod["metadata"]["name"], pod["metadata"]["labels"][labels.EXECUTOR_ID]
    if method == "api-delete":
        core_api.delete_namespaced_pod(name, "default", _preload_content=False)
    elif method == "kubectl-delete":
        subprocess.run(["kubectl", "--kubeconfig", kube.kubeconfig, "delete", "pod", name, "-n", "default",
                        "--wait=false"], check=True, capture_output=True, timeout=30)
    else:
        if not sigkill_executor(cluster.app.app_id, executor):
            return None
    return executor


def run_kill_chaos(kube: Any, *, seed: int = 7, target: int = 4, kills: int = 6, tasks: int = 240,
                   task_seconds: float = 0.25) -> KillReport:
    """Kill random workers (API delete, kubectl delete, SIGKILL) every 1-3 s while a computation runs."""
    import dask
    from distributed import Client
    from kubernetes import client as k8s, config as k8s_config

    from dask_k8s_backend import KubeSparkCluster

    rng = random.Random(seed)
    report = KillReport(target=target)
    creations = PodCreations()
    unsubscribe = kube.store.add_listener(creations)
    api_client = k8s_config.new_client_from_config(config_file=kube.kubeconfig)
    core_api = k8s.CoreV1Api(api_client)
    try:
        # a task may be on several killed workers in a row; Spark allows 4 task failures, we allow 10
        with dask.config.set({"distributed.scheduler.allowed-failures": 10}), \
                KubeSparkCluster(**cluster_kwargs(kube, n_workers=target)) as cluster, Client(cluster) as client:
            client.wait_for_workers(target, timeout=60)
            futures = client.map(slow_square_task(task_seconds), range(tasks), pure=False)
            total = client.submit(sum, futures)
            start = time.monotonic()
            for i in range(kills):
                time.sleep(rng.uniform(1.0, 3.0))
                method = KILL_METHODS[i % len(KILL_METHODS)]
                executor = _kill_one(kube, cluster, rng, method, core_api)
                if executor is not None:
                    report.kills.append((round(time.monotonic() - start, 2), method, executor))
            last_kill = time.monotonic()
            killed = {executor for _, _, executor in report.kills}

            def recovered() -> bool:  # the kills are noticed (their ids gone) and replaced
                live = {p["metadata"]["labels"][labels.EXECUTOR_ID] for p in live_pods(kube, cluster.app.app_id)}
                return not killed & (live | registered_ids(cluster)) and at_target(kube, cluster, target)

            wait_until(recovered, timeout=60, what=f"{target} live registered workers")
            report.recovery_seconds = round(time.monotonic() - last_kill, 2)
            report.result_correct = total.result(timeout=120) == sum(x * x for x in range(tasks))
            app_id = cluster.app.app_id
        _count_pods(report, kube, creations, app_id)
    finally:
        unsubscribe()
        api_client.close()
    return report


# ---------------------------------------------------------------------------- scenario 2: API faults

@dataclass
class ApiFaultReport:
    target: int
    replacements: int = 0  # pods the test deleted, each legitimately replaced
    errors_injected: int = 0
    watch_drops: int = 0
    outage_seconds: float = 0.0
    pods_created: int = 0
    executor_ids_reused: list[str] = field(default_factory=list)
    caught_up_seconds: float = float("nan")  # end of the outage -> back at target
    result_correct: bool = False  # a computation running through the outage
    pods_leaked: int = -1


class _CountingFaults:
    """Counts the errors the API server answered with (wraps FaultInjector.request_failure)."""

    def __init__(self, faults: Any) -> None:
        self.faults, self.count = faults, 0
        self._original = faults.request_failure

    def __call__(self) -> Any:
        error = self._original()
        if error is not None:
            self.count += 1
        return error

    def __enter__(self) -> _CountingFaults:
        self.faults.request_failure = self
        return self

    def __exit__(self, *exc: Any) -> None:
        self.faults.set_error_rate(0.0)
        del self.faults.request_failure


def _delete_one(kube: Any, cluster: Any, rng: random.Random) -> None:
    """Delete a random live pod directly in the store (an outside actor; immune to the faults)."""
    pods = sorted(live_pods(kube, cluster.app.app_id), key=lambda p: p["metadata"]["name"])
    kube.store.delete("pods", "default", rng.choice(pods)["metadata"]["name"])


def run_api_faults(kube: Any, *, seed: int = 11, target: int = 3, outage: float = 10.0,
                   error_rate: float = 0.2, deletions: int = 3, min_errors: int = 5) -> ApiFaultReport:
    """Dropped watches, 20% 429/503 answers and a 10 s outage while pods are deleted and scaled."""
    from distributed import Client

    from dask_k8s_backend import KubeSparkCluster

    rng = random.Random(seed)
    report = ApiFaultReport(target=target + 2)
    creations = PodCreations()
    unsubscribe = kube.store.add_listener(creations)
    try:
        # polling 4 times a second keeps a steady stream of LISTs going through the faulty server
        with KubeSparkCluster(**cluster_kwargs(kube, n_workers=target, api={"max-retries": 8},
                                               executor={"api-polling-interval": "250ms"})) as cluster, \
                _CountingFaults(kube.faults) as counting, Client(cluster) as client:
            wait_until(lambda: at_target(kube, cluster, target), timeout=60, what="initial workers")
            kube.faults.set_error_rate(error_rate, codes=(429, 503), retry_after=1)
            report.watch_drops += kube.faults.drop_watches()
            cluster.scale(target + 2)  # scaling through the faulty API
            wait_until(lambda: counting.count >= min_errors, timeout=30, what=f"{min_errors} injected errors")
            wait_until(lambda: at_target(kube, cluster, target + 2), timeout=60, what="scale-up under 20% errors")
            for _ in range(deletions):  # each replacement is created and watched through the faulty API
                _delete_one(kube, cluster, rng)
                report.replacements += 1
                report.watch_drops += kube.faults.drop_watches()
                wait_until(lambda: at_target(kube, cluster, target + 2), timeout=60, what="replacement under errors")
            report.watch_drops += kube.faults.drop_watches()
            # the Dask comm does not go through the API server: work goes on during the outage
            squares = client.map(slow_square_task(0.05), range(200), pure=False)
            kube.faults.pause(outage)
            outage_start = time.monotonic()
            time.sleep(min(2.0, outage / 2))
            _delete_one(kube, cluster, rng)  # happens while the backend cannot see it
            report.replacements += 1
            time.sleep(max(0.0, outage - (time.monotonic() - outage_start)))
            report.outage_seconds = outage
            back = time.monotonic()
            wait_until(lambda: at_target(kube, cluster, target + 2), timeout=60, what="catching up after the outage")
            report.caught_up_seconds = round(time.monotonic() - back, 2)
            report.errors_injected = counting.count
            report.result_correct = client.submit(sum, squares).result(timeout=60) == sum(x * x for x in range(200))
            app_id = cluster.app.app_id
        _count_pods(report, kube, creations, app_id)
    finally:
        unsubscribe()
    return report


# ---------------------------------------------------------------------------- scenario 3: scheduler killed

DRIVER = """
import sys, time
from dask_k8s_backend import KubeSparkCluster
from distributed import Client
url, kubeconfig, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
cluster = KubeSparkCluster(master="k8s://" + url, quiet=True, worker_memory="512MiB", security={"tls": True},
                           authenticate={"kubeconfig": kubeconfig}, worker={"death-timeout": "10s"})
cluster.scale(n)
Client(cluster).wait_for_workers(n, timeout=60)
print("READY", cluster.app.app_id, flush=True)
time.sleep(600)
"""


@dataclass
class SchedulerKillReport:
    workers: int
    death_timeout: float = 10.0
    exit_seconds: float = float("nan")  # SIGKILL -> every worker pod finished
    status_output: str = ""
    gc_output: str = ""
    pods_leaked: int = -1  # pods and secrets left after gc


def _finished(pod: dict) -> bool:
    return pod.get("status", {}).get("phase") in ("Succeeded", "Failed")


def run_cli(kube: Any, *args: str) -> str:
    """``python -m dask_k8s_backend ARGS`` with KUBECONFIG set to the embedded kubeconfig."""
    env = {**os.environ, "KUBECONFIG": kube.kubeconfig}
    done = subprocess.run([sys.executable, "-m", "dask_k8s_backend", *args], env=env, capture_output=True,
                          text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"{args} exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def run_scheduler_kill(kube: Any, *, workers: int = 2) -> SchedulerKillReport:
    """SIGKILL the process holding the scheduler; workers must exit; gc removes what is left."""
    report = SchedulerKillReport(workers=workers)
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, kube.url, kube.kubeconfig, str(workers)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=str(ROOT))
    try:
        line = ""
        deadline = time.monotonic() + 90
        while not line.startswith("READY") and time.monotonic() < deadline:
            line = driver.stdout.readline() if driver.stdout else ""  # type: ignore[union-attr]
            if not line and driver.poll() is not None:
                raise AssertionError(f"the driver exited with {driver.returncode} before its workers were ready")
        app_id = line.split()[1]
        assert len(app_pods(kube, app_id)) == workers
        driver.kill()
        driver.wait(timeout=10)
        killed = time.monotonic()
        wait_until(lambda: all(_finished(p) for p in app_pods(kube, app_id)), timeout=report.death_timeout + 15,
                   interval=0.2, what="worker pods to exit after their scheduler died")
        report.exit_seconds = round(time.monotonic() - killed, 2)
        report.status_output = run_cli(kube, "status", "--master", "k8s://")
        report.gc_output = run_cli(kube, "gc", "--master", "k8s://", "--app", app_id)
        wait_until(lambda: not app_pods(kube, app_id), timeout=15, what="gc to delete the pods")
        secrets, _, _ = kube.store.list("secrets", "default", label_selector=f"{labels.APP_ID}={app_id}")
        report.pods_leaked = len(app_pods(kube, app_id)) + len(secrets)  # the TLS secret counts too
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=10)
        if driver.stdout:
            driver.stdout.close()
    return report


PENDING_DRIVER = """
import sys, time
from dask_k8s_backend import KubeSparkCluster
url, kubeconfig, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
cluster = KubeSparkCluster(master="k8s://" + url, quiet=True, worker_memory="512MiB",
                           authenticate={"kubeconfig": kubeconfig},
                           scheduler={"lease-renew-interval": "1s", "lease-duration": "3s"},
                           worker={"node-selector": {"dask-k8s-backend-chaos/no-such-node": "true"}})
cluster.scale(n)
print("READY", cluster.app.app_id, flush=True)
time.sleep(600)
"""


@dataclass
class ClientKillPendingReport:
    """A client-mode driver SIGKILLed while its worker pods are Pending (no death-timeout can end them)."""

    pending: int
    lease_duration: float = 3.0
    left_by_early_gc: int = -1  # pods a gc before the heartbeat expired left alone (all of them)
    dead_after_seconds: float = float("nan")  # SIGKILL -> `status` says dead
    gone_after_gc_seconds: float = float("nan")  # `gc` (no --app) -> no pod of the app
    gc_output: str = ""
    pods_leaked: int = -1


def _status_line(kube: Any, app_id: str) -> str:
    """The app's header line in `python -m dask_k8s_backend status` ("" when not listed)."""
    lines = run_cli(kube, "status", "--master", "k8s://").splitlines()
    return next((line for line in lines if line.startswith(f"app {app_id} ")), "")


def run_client_kill_while_pending(kube: Any, *, pending: int = 2) -> ClientKillPendingReport:
    """SIGKILL a client whose pods are Pending; once its heartbeat expires, `gc` without --app removes them."""
    report = ClientKillPendingReport(pending=pending)
    driver = subprocess.Popen([sys.executable, "-c", PENDING_DRIVER, kube.url, kube.kubeconfig, str(pending)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=str(ROOT))
    try:
        line = driver.stdout.readline() if driver.stdout else ""  # type: ignore[union-attr]
        if not line.startswith("READY"):
            raise AssertionError(f"the driver exited with {driver.wait(timeout=30)} before creating its pods")
        app_id = line.split()[1]
        wait_until(lambda: len(app_pods(kube, app_id)) == pending, timeout=60, what="the Pending pods")
        run_cli(kube, "gc", "--master", "k8s://")
        report.left_by_early_gc = len(app_pods(kube, app_id))
        driver.kill()
        driver.wait(timeout=10)
        killed = time.monotonic()
        wait_until(lambda: "dead" in _status_line(kube, app_id), timeout=30, interval=0.5,
                   what="status to say the app is dead")
        report.dead_after_seconds = round(time.monotonic() - killed, 2)
        collected = time.monotonic()
        report.gc_output = run_cli(kube, "gc", "--master", "k8s://")
        wait_until(lambda: not app_pods(kube, app_id), timeout=15, what="gc to delete the Pending pods")
        report.gone_after_gc_seconds = round(time.monotonic() - collected, 2)
        report.pods_leaked = len(app_pods(kube, app_id))
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=10)
        if driver.stdout:
            driver.stdout.close()
    return report
