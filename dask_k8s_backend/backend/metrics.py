"""Prometheus metrics of the executor-pod backends, served on the scheduler's ``/metrics``.

Data flow::

    plugin.build_pod ──────── note_requested(id, group) ─┐
    KubePodApi.on_request ─── on_request(verb, code) ────┤
    SnapshotsStore ────────── on_snapshots(...) ─────────┼─> BackendMetrics (plain counts and timings)
    scheduler add_worker ──── note_registered(id) ───────┘          │ read at scrape time
    allocator / store (live: targets, outstanding, phases) ─────────┤
                                                                    v
                            BackendsCollector (registered once in prometheus_client.REGISTRY)
                                                                    │
                             distributed's /metrics handler: generate_latest() ─> text

distributed serves ``/metrics`` from prometheus_client's default registry, where it registers its own
collectors. Several schedulers may live in one process (tests, notebooks): so metric objects are not
created per backend (a second registration of a name would clash); one collector is registered once,
reads every live backend at scrape time and labels each sample with the backend's ``app`` id.

Counted here: executors by group and phase; pods created; pods deleted by reason (``scale-down``,
``failure`` for the backend's timeouts, ``cleanup`` after a pod ended, ``external`` for anyone else);
pods failed by reason (the pod's or its container's: ``OOMKilled``, ``Error``, ``Evicted``...); API
requests by verb and code; the time from the request to Running and to the worker's registration.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.plugin import SchedulerPlugin
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ..clock import Clock
from ..pods.states import PodDeleted, PodFailed, PodRunning, PodState, PodSucceeded
from .observation.snapshots import ExecutorPodsSnapshot, group_of_pod

if TYPE_CHECKING:
    from .components import BackendComponents

logger = logging.getLogger(__name__)

PREFIX = "dask_k8s"
SNAPSHOT_INTERVAL = 0.2  # seconds between transition counts (every snapshot is seen, in order, whatever the interval)
# Seconds from the request to Running / to registration: pods start in about a second on a warm node and in
# minutes when an image is pulled or a node is added.
BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


@dataclass
class Timings:
    """A histogram's cumulative buckets and sum, kept as plain numbers (exported at scrape time)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds

    def buckets(self) -> list[tuple[str, int]]:
        cumulative, out = 0, []
        for bound, count in zip((*(floatToGoString(b) for b in BUCKETS), "+Inf"), self.counts):
            cumulative += count
            out.append((bound, cumulative))
        return out


def failure_reason(pod: dict[str, Any]) -> str:
    """A short, low-cardinality reason a pod failed: the pod's (Evicted) or its container's (OOMKilled, Error)."""
    status = pod.get("status") or {}
    if status.get("reason"):
        return str(status["reason"])
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
        if terminated.get("reason"):
            return str(terminated["reason"])
    return "Failed"


def deletion_reason(*, ended_before: bool, on_purpose: bool, counted_as_failure: bool) -> str:
    """Why a pod disappeared, in one word (see the module docstring)."""
    if ended_before:
        return "cleanup"
    if on_purpose:
        return "failure" if counted_as_failure else "scale-down"
    return "external"


class BackendMetrics:
    """One app's counts and timings; the hooks are cheap and never raise into their callers."""

    def __init__(self, *, app_id: str, clock: Clock, on_purpose: Callable[[int], str | None],
                 failure_of: Callable[[int], str | None]) -> None:
        self.app_id = app_id
        self.clock = clock
        self._on_purpose = on_purpose
        self._failure_of = failure_of
        self._lock = threading.Lock()  # on_request runs in the pod API's threads
        self.requests: Counter[tuple[str, str]] = Counter()
        self.deleted: Counter[tuple[str, str]] = Counter()
        self.failed: Counter[tuple[str, str]] = Counter()
        self.to_running: dict[str, Timings] = {}
        self.to_registered: dict[str, Timings] = {}
        self._requested: dict[int, tuple[str, float]] = {}
        self._running: set[int] = set()
        self._ended: set[int] = set()
        self._gone: set[int] = set()

    # ------------------------------------------------------------------ hooks
    def note_requested(self, executor_id: int, group: str) -> None:
        self._requested.setdefault(executor_id, (group, self.clock.now()))

    def note_registered(self, executor_id: int) -> None:
        self._observe_since_request(self.to_registered, executor_id)

    def on_request(self, verb: str, code: int) -> None:
        with self._lock:
            self.requests[(verb, str(code))] += 1

    async def on_snapshots(self, snapshots: list[ExecutorPodsSnapshot]) -> None:
        """Count each executor's transitions once, in snapshot order (a store subscriber)."""
        for snapshot in snapshots:
            ids = snapshot.executor_pods.keys() if snapshot.changed is None else snapshot.changed
            for executor_id in list(ids):
                state = snapshot.executor_pods.get(executor_id)
                if state is not None:
                    self._on_state(executor_id, state)

    # ------------------------------------------------------------------ rules
    def _on_state(self, executor_id: int, state: PodState) -> None:
        group = group_of_pod(state.pod)
        if isinstance(state, PodRunning) and executor_id not in self._running:
            self._running.add(executor_id)
            self._observe_since_request(self.to_running, executor_id)
        elif isinstance(state, (PodFailed, PodSucceeded)) and executor_id not in self._ended:
            if (state.pod.get("metadata") or {}).get("deletionTimestamp"):
                return  # it ended because it was deleted: counted once, as that deletion, when it is gone
            self._ended.add(executor_id)
            if isinstance(state, PodFailed):
                self.failed[(group, failure_reason(state.pod))] += 1
        elif isinstance(state, PodDeleted) and executor_id not in self._gone:
            self._gone.add(executor_id)
            reason = deletion_reason(ended_before=executor_id in self._ended,
                                     on_purpose=self._on_purpose(executor_id) is not None,
                                     counted_as_failure=self._failure_of(executor_id) is not None)
            self.deleted[(group, reason)] += 1

    def _observe_since_request(self, timings: dict[str, Timings], executor_id: int) -> None:
        requested = self._requested.get(executor_id)
        if requested is None:
            return  # created by an earlier scheduler of this app: its request time is unknown
        group, since = requested
        timings.setdefault(group, Timings()).observe(max(0.0, self.clock.now() - since))


# ---------------------------------------------------------------------------------------------- export
@dataclass(frozen=True)
class LiveView:
    """What a scrape reads from a running backend besides its counts (callables: read at scrape time)."""

    metrics: BackendMetrics
    phases: Callable[[], Counter[tuple[str, str]]]  # (group, phase) -> executors
    targets: Callable[[], dict[str, int]]
    outstanding: Callable[[], int]
    pods_created: Callable[[], int]


def phases_of(snapshot: ExecutorPodsSnapshot) -> Counter[tuple[str, str]]:
    """(group, phase) -> number of executors; the phase is the state's name (Pending, Running, ...)."""
    return Counter((group_of_pod(s.pod), type(s).__name__.removeprefix("Pod")) for s in snapshot.executor_pods.values())


class BackendsCollector(Collector):
    """Every live backend of this process, as metric families labelled by app."""

    def __init__(self) -> None:
        self._views: dict[str, LiveView] = {}

    def add(self, view: LiveView) -> None:
        self._views[view.metrics.app_id] = view

    def remove(self, app_id: str) -> None:
        self._views.pop(app_id, None)

    def collect(self) -> Iterator[Metric]:
        views = list(self._views.values())
        yield from _gauges(views)
        yield from _counters(views)
        yield from _histograms(views)


def _gauges(views: list[LiveView]) -> Iterator[Metric]:
    executors = GaugeMetricFamily(f"{PREFIX}_executors", "Executor pods by worker group and phase",
                                  labels=["app", "group", "phase"])
    target = GaugeMetricFamily(f"{PREFIX}_allocator_target", "Executors the allocator aims at, per worker group",
                               labels=["app", "group"])
    outstanding = GaugeMetricFamily(f"{PREFIX}_allocator_outstanding",
                                    "Pod creations requested and not yet seen in the pod list", labels=["app"])
    for view in views:
        app = view.metrics.app_id
        for (group, phase), count in sorted(view.phases().items()):
            executors.add_metric([app, group, phase], count)
        for group, n in sorted(view.targets().items()):
            target.add_metric([app, group], n)
        outstanding.add_metric([app], view.outstanding())
    return [executors, target, outstanding]


def _counters(views: list[LiveView]) -> Iterator[Metric]:
    created = CounterMetricFamily(f"{PREFIX}_pods_created", "Executor pods created through the API", labels=["app"])
    deleted = CounterMetricFamily(f"{PREFIX}_pods_deleted", "Executor pods seen deleted, by reason",
                                  labels=["app", "group", "reason"])
    failed = CounterMetricFamily(f"{PREFIX}_pods_failed", "Executor pods seen Failed, by reason",
                                 labels=["app", "group", "reason"])
    requests = CounterMetricFamily(f"{PREFIX}_api_requests", "Kubernetes API requests of the backend, by verb and "
                                   "HTTP code (0: no answer)", labels=["app", "verb", "code"])
    for view in views:
        m = view.metrics
        created.add_metric([m.app_id], view.pods_created())
        for (group, reason), n in sorted(m.deleted.items()):
            deleted.add_metric([m.app_id, group, reason], n)
        for (group, reason), n in sorted(m.failed.items()):
            failed.add_metric([m.app_id, group, reason], n)
        with m._lock:
            answered = sorted(m.requests.items())
        for (verb, code), n in answered:
            requests.add_metric([m.app_id, verb, code], n)
    return [created, deleted, failed, requests]


def _histograms(views: list[LiveView]) -> Iterator[Metric]:
    families = (
        (HistogramMetricFamily(f"{PREFIX}_executor_time_to_running_seconds",
                               "Seconds from the pod's request to Running", labels=["app", "group"]), "to_running"),
        (HistogramMetricFamily(f"{PREFIX}_executor_time_to_registered_seconds",
                               "Seconds from the pod's request to its worker's registration", labels=["app", "group"]),
         "to_registered"),
    )
    for family, attribute in families:
        for view in views:
            for group, timings in sorted(getattr(view.metrics, attribute).items()):
                family.add_metric([view.metrics.app_id, group], timings.buckets(), timings.total)
        yield family


_collector: BackendsCollector | None = None
_collector_lock = threading.Lock()


def collector() -> BackendsCollector:
    """The process's one collector, registered with prometheus_client's default registry on first use."""
    global _collector
    with _collector_lock:
        if _collector is None:
            _collector = BackendsCollector()
            REGISTRY.register(_collector)
        return _collector


# ---------------------------------------------------------------------------------------------- wiring
class RegistrationTimer(SchedulerPlugin):
    """Times each executor's worker registration (a worker's name is its executor id)."""

    def __init__(self, metrics: BackendMetrics) -> None:
        self.metrics = metrics

    def add_worker(self, scheduler: Any, worker: str) -> None:
        ws = scheduler.workers.get(worker)
        try:
            self.metrics.note_registered(int(ws.name))
        except (AttributeError, TypeError, ValueError):
            return  # not one of our executors: the gatekeeper refuses those


def start_metrics(*, app_id: str, scheduler: Any, components: BackendComponents) -> BackendMetrics:
    """Hook one backend's metrics to its pod API, its snapshots and its scheduler, and export them."""
    failures, allocator = components.failures, components.allocator
    metrics = BackendMetrics(app_id=app_id, clock=components.clock, on_purpose=failures.deletion_reason,
                             failure_of=failures.explanation)
    components.api.on_request = metrics.on_request
    components.store.add_subscriber(SNAPSHOT_INTERVAL, metrics.on_snapshots)
    scheduler.add_plugin(RegistrationTimer(metrics), name=f"k8s-metrics-{app_id}")
    collector().add(LiveView(metrics=metrics, phases=lambda: phases_of(components.store.current),
                             targets=allocator.targets, outstanding=allocator.outstanding,
                             pods_created=lambda: allocator.pods_created))
    return metrics


def stop_metrics(app_id: str) -> None:
    """A closed backend's series disappear from /metrics (its app id would otherwise linger)."""
    collector().remove(app_id)
