"""Where the time of a scale(N) goes: pods created, pods Running, workers registered, over time.

Shared by ``benchmarks/scale.py`` and ``benchmarks/peer.py`` so both record and draw a run the same
way. A :class:`PodWatch` follows the pods of one namespace through the Kubernetes API (the receipt
time of the watch event, not ``creationTimestamp``, which has one-second resolution); a
:class:`Registrations` scheduler plugin stamps each worker as the scheduler adds it. Times are
``time.time()`` seconds; :func:`relative` turns them into seconds after the ``scale`` call.
:func:`plot` draws one panel per kind, side by side, when matplotlib is importable
(``pip install matplotlib``, or ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Iterable

import kubernetes
from distributed import Scheduler
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.utils import sync

logger = logging.getLogger(__name__)

#: Seconds each watch request lasts; the watch thread checks for stop between requests.
_WATCH_WINDOW = 2


class PodWatch:
    """First-seen and first-Running times of every pod of a namespace, from a watch in a thread.

    Why a watch and not polling: a LIST every few ms would load the API server the benchmark
    measures, and the watch is how both clusters themselves learn about their pods.
    """

    def __init__(self, core: kubernetes.client.CoreV1Api, namespace: str) -> None:
        self.core = core
        self.namespace = namespace
        self.created: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-timeline-watch", daemon=True)

    def start(self) -> PodWatch:
        """Start watching from the namespace's current resource version; returns once the watch is open."""
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("the pod timeline watch did not start within 30 s")
        return self

    def stop(self) -> None:
        """Stop after the current watch window (at most :data:`_WATCH_WINDOW` seconds)."""
        self._stop.set()
        self._thread.join(_WATCH_WINDOW + 5)

    def _run(self) -> None:
        version = self.core.list_namespaced_pod(self.namespace).metadata.resource_version
        self._ready.set()
        while not self._stop.is_set():
            try:
                version = self._watch_window(version)
            except kubernetes.client.ApiException as e:
                if e.status != 410:
                    raise
                version = self.core.list_namespaced_pod(self.namespace).metadata.resource_version
            except Exception:  # a benchmark's timeline must not kill the benchmark
                logger.exception("pod timeline watch failed; the timeline ends here")
                return

    def _watch_window(self, version: str) -> str:
        """One watch request; records each pod's first event and first Running phase."""
        watch = kubernetes.watch.Watch()
        for event in watch.stream(self.core.list_namespaced_pod, self.namespace, resource_version=version,
                                  timeout_seconds=_WATCH_WINDOW, allow_watch_bookmarks=False):
            now = time.time()
            pod = event["object"]
            version = pod.metadata.resource_version or version
            name = pod.metadata.name
            if event["type"] in ("ADDED", "MODIFIED"):
                self.created.setdefault(name, now)
                if pod.status is not None and pod.status.phase == "Running":
                    self.running.setdefault(name, now)
            if self._stop.is_set():
                watch.stop()
        return version


class Registrations(SchedulerPlugin):
    """When the scheduler added each worker (``time.time()``), by worker address."""

    name = "benchmark-registrations"

    def __init__(self) -> None:
        self.added: dict[str, float] = {}

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        self.added.setdefault(worker, time.time())


def register(cluster: Any) -> Registrations:
    """Install a :class:`Registrations` on the cluster's in-process scheduler, on its event loop.

    Why on the scheduler object rather than ``client.register_plugin``: that pickles the plugin,
    and the copy's times would have to be fetched back; all clusters measured here run their
    scheduler in this process.
    """
    plugin = Registrations()

    async def add() -> None:
        cluster.scheduler.add_plugin(plugin, name=plugin.name, idempotent=False)

    sync(cluster.loop, add)
    return plugin


def relative(t0: float, times: Iterable[float]) -> list[float]:
    """Sorted seconds after ``t0`` (events from before ``t0``, e.g. a previous run's pods, dropped)."""
    return sorted(round(t - t0, 4) for t in times if t >= t0)


def record(t0: float, pods: PodWatch | None, registrations: Registrations) -> dict[str, list[float]]:
    """The JSON form of one run's timeline: seconds after the ``scale`` call for each event kind."""
    return {
        "created": relative(t0, pods.created.values()) if pods else [],
        "running": relative(t0, pods.running.values()) if pods else [],
        "registered": relative(t0, registrations.added.values()),
    }


def median_run(runs: list[dict]) -> dict:
    """The run whose time is the median (the lower one of an even count): the one worth drawing."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    return ordered[(len(ordered) - 1) // 2]


def plot(panels: list[tuple[str, dict]], path: str | Path, title: str) -> bool:
    """One step chart per (label, run) side by side, shared time axis; False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), sharex=True, sharey=True, squeeze=False)
    styles = (("created", "pods created", "tab:blue"), ("running", "pods Running", "tab:orange"),
              ("registered", "workers registered", "tab:green"))
    for ax, (label, run) in zip(axes[0], panels):
        for key, name, color in styles:
            times = run["timeline"][key]
            if times:
                ax.step([0.0, *times], [0, *range(1, len(times) + 1)], where="post", label=name, color=color)
        ax.axvline(run["seconds"], color="grey", linestyle=":", label=f"all registered: {run['seconds']:.2f} s")
        ax.set_title(f"{label}\n(median of {run.get('of_runs', '?')} runs)", fontsize=10)
        ax.set_xlabel("seconds after scale()")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    axes[0][0].set_ylabel("count")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
