"""ExecutorPodsLifecycleManager: pods in final states -> worker removed, pod cleaned up, failures counted.

Data flow::

    SnapshotsStore ── batches ──> on_snapshots ──┬─> on_executor_lost(id, explanation)   (plugin: remove worker)
                                                 ├─> api.delete_pod / api.patch_pod_labels(inactive)
                                                 └─> FailureTracker.record_failure(group, id, explanation)
    known_executors() (plugin) ──────────────────┘   (for pods missing from full snapshots)

A terminating pod whose node was lost (evicted by the taint-eviction controller, or NodeLost;
:func:`~dask_k8s_backend.pods.exits.node_lost`) is reported lost too, without counting a failure:
no kubelet will ever confirm its deletion.

For every executor whose pod reaches Failed, Succeeded or Deleted, ``on_executor_lost`` is called
exactly once with a sentence from :func:`dask_k8s_backend.pods.exits.explain` (or the reason the
backend itself gave when it deleted the pod on purpose), then the pod is deleted, or with
``delete-on-termination: false`` labelled ``dask-k8s-backend/inactive=true`` and kept for
debugging. Before a pod is deleted, the tail of its log is kept in
:class:`~dask_k8s_backend.backend.executors.kept_logs.KeptLogs` (bounded), so ``cluster.logs(id)`` still
answers once the pod is gone. An executor the scheduler knows (or that was seen alive) but that is absent from full
snapshots for ``missing-pod-detect-delta`` seconds is treated as Deleted (a missed DELETED event).

Failures (Failed pods, and pods deleted from outside with a failed container) are counted per
worker group in the shared :class:`~dask_k8s_backend.backend.executors.failures.FailureTracker`; the
allocator reads it and stops replacing a group at ``max-failures``. Pods the backend deleted on
purpose and workers that exited normally are not failures. Neither is a pod someone else deleted
(``kubectl delete``, a drain) whose containers ended only by that deletion's stop signals
(:func:`ended_by_deletion`: SIGTERM 143, or SIGKILL 137 after the grace period): it is lost, as
Spark reports a deleted executor pod (PodDeleted, not caused by the app) and never counts it
toward ``spark.executor.maxNumFailures``. This manager never calls the allocator.

Interface used by the plugin::

    lifecycle = ExecutorPodsLifecycleManager(api=api, settings=settings.executor, failures=tracker,
                                             clock=clock, on_executor_lost=async_or_sync_cb,
                                             known_executors=ids_fn)
    lifecycle.start(store)        # subscribes at event-processing-interval
    lifecycle.lost_ids            # executors already reported lost
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from dask_k8s_backend import labels
from dask_k8s_backend.clock import Clock, SystemClock
from dask_k8s_backend.config import ExecutorSettings
from dask_k8s_backend.pods.exits import explain_deletion, node_lost
from dask_k8s_backend.pods.states import PodDeleted, PodFailed, PodState
from ..observation.snapshots import ExecutorPodsSnapshot, group_of_pod
from .failures import FailureTracker
from .kept_logs import TAIL_LINES, KeptLogs

logger = logging.getLogger(__name__)

try:
    from dask_k8s_backend.pods.exits import explain as _explain
except ImportError:  # pragma: no cover - exits.py is part of the project
    _explain = None  # type: ignore[assignment]

LostCallback = Callable[[int, str], "Awaitable[None] | None"]
CLEANUP_CONCURRENCY = 16
STOP_SIGNAL_EXITS = (0, 128 + 15, 128 + 9)  # a clean stop, SIGTERM, SIGKILL once the grace period ran out


def explain(state: PodState, executor_id: int) -> str:
    if _explain is not None:
        return _explain(state)
    return f"executor {executor_id} ended: {type(state).__name__}"


def ended_by_deletion(state: PodState) -> bool:
    """The pod was being deleted and no container ended other than by the stop the deletion sent.

    Why: a worker answers the deletion's SIGTERM with exit 143 (137 if the grace period ran out), so
    the kubelet reports the pod Failed just before it is gone; that end was asked for, not a crash.
    An OOMKill or any other exit code still counts: the container failed on its own.
    """
    if not (state.pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    status = state.pod.get("status") or {}
    for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        terminated = (container.get("state") or {}).get("terminated") or {}
        if terminated.get("reason") == "OOMKilled" or (terminated.get("exitCode") or 0) not in STOP_SIGNAL_EXITS:
            return False
    return True


def _signalled(state: PodState) -> bool:
    """Some app container ended with a non-zero code (else the usual "deleted before it exited" sentence fits)."""
    status = state.pod.get("status") or {}
    return any(((c.get("state") or {}).get("terminated") or {}).get("exitCode")
               for c in status.get("containerStatuses") or [])


def is_failure(state: PodState) -> bool:
    """Failed pods count; a deleted pod counts only when a container had failed; Succeeded never.

    A pod whose end came from its deletion (:func:`ended_by_deletion`) is never a failure.
    """
    if isinstance(state, (PodFailed, PodDeleted)) and ended_by_deletion(state):
        return False
    if isinstance(state, PodFailed):
        return True
    if isinstance(state, PodDeleted):
        statuses = (state.pod.get("status") or {}).get("containerStatuses") or []
        for status in statuses:
            terminated = (status.get("state") or {}).get("terminated") or {}
            if (terminated.get("exitCode") or 0) != 0 or terminated.get("reason") == "OOMKilled":
                return True
    return False


class ExecutorPodsLifecycleManager:
    """Reacts to final pod states; see the module docstring for the rules."""

    def __init__(
        self,
        *,
        api: Any,
        settings: ExecutorSettings,
        failures: FailureTracker,
        on_executor_lost: LostCallback,
        clock: Clock | None = None,
        known_executors: Callable[[], Iterable[int]] = frozenset,
        kept_logs: KeptLogs | None = None,
    ) -> None:
        self.api = api
        self.kept_logs = kept_logs
        self.settings = settings
        self.failures = failures
        self.on_executor_lost = on_executor_lost
        self.clock = clock or SystemClock()
        self.known_executors = known_executors
        self.lost_ids: set[int] = set()
        self._cleanups: list[Coroutine[Any, Any, None]] = []
        self._cleanup_slots = asyncio.Semaphore(CLEANUP_CONCURRENCY)
        self._last_seen: dict[int, float] = {}
        self._last_full_ts: float | None = None

    def start(self, store: Any, interval: float | None = None) -> None:
        store.add_subscriber(interval or self.settings.event_processing_interval or 0.1, self.on_snapshots)

    async def on_snapshots(self, snapshots: list[ExecutorPodsSnapshot]) -> None:
        """Handle each snapshot in order; full snapshots also detect missing pods.

        Pod clean-ups (keeping the log, then deleting or labelling) of one delivery run concurrently,
        at most CLEANUP_CONCURRENCY at a time, and the delivery ends when they have: a scale-down of a
        thousand pods does not wait for a thousand log reads one after the other.
        """
        self._cleanups = []
        for snapshot in snapshots:
            ids = snapshot.executor_pods.keys() if snapshot.changed is None else snapshot.changed
            for executor_id in list(ids):
                state = snapshot.executor_pods.get(executor_id)
                if state is not None:
                    await self._on_state(executor_id, state)
            if snapshot.is_full and snapshot.full_snapshot_ts != self._last_full_ts:
                self._last_full_ts = snapshot.full_snapshot_ts
                await self._detect_missing(snapshot)
        cleanups, self._cleanups = self._cleanups, []
        await asyncio.gather(*cleanups)

    async def _on_state(self, executor_id: int, state: PodState) -> None:
        if executor_id in self.lost_ids:
            return
        if not state.is_final:
            lost_with_node = node_lost(state)
            if lost_with_node is None:
                self._last_seen[executor_id] = self.clock.now()
            else:  # no failure of the app; the pod is being deleted already, so no clean-up either
                await self._lost(executor_id, self.failures.deletion_reason(executor_id) or lost_with_node)
            return
        if ((state.pod.get("metadata") or {}).get("labels") or {}).get(labels.INACTIVE) == "true":
            self.lost_ids.add(executor_id)  # kept for debugging by an earlier run: already handled
            return
        on_purpose = self.failures.deletion_reason(executor_id)
        explanation = self.failures.explanation(executor_id) or on_purpose or self._explain(executor_id, state)
        if on_purpose is None and is_failure(state):
            self.failures.record_failure(group_of_pod(state.pod), executor_id, explanation)
        await self._lost(executor_id, explanation)
        if not isinstance(state, PodDeleted):
            self._cleanups.append(self._clean_up(executor_id, state))

    @staticmethod
    def _explain(executor_id: int, state: PodState) -> str:
        """The usual sentence, except for a worker stopped by someone else's deletion: it says why it is no failure."""
        if isinstance(state, (PodFailed, PodDeleted)) and ended_by_deletion(state) and _signalled(state):
            return explain_deletion(state.pod)
        return explain(state, executor_id)

    async def _detect_missing(self, snapshot: ExecutorPodsSnapshot) -> None:
        now = self.clock.now()
        candidates = (set(self.known_executors()) | self._last_seen.keys()) - snapshot.executor_pods.keys() - self.lost_ids
        delta = self.settings.missing_pod_detect_delta
        for executor_id in sorted(candidates):
            last = self._last_seen.setdefault(executor_id, now)
            if snapshot.full_snapshot_ts - last < delta:
                continue
            explanation = self.failures.deletion_reason(executor_id) or (
                f"executor {executor_id} is no longer in the pod list: missing from full resyncs for more than "
                f"{delta:g} s (k8s-backend.executor.missing-pod-detect-delta); its pod was probably deleted "
                "while the watch was down. It is replaced if below the target.")
            await self._lost(executor_id, explanation)

    async def _lost(self, executor_id: int, explanation: str) -> None:
        self.lost_ids.add(executor_id)
        self._last_seen.pop(executor_id, None)
        logger.debug("%s", explanation)  # the owner (the plugin) shows and logs it: once
        try:
            result = self.on_executor_lost(executor_id, explanation)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("on_executor_lost failed for executor %s; continuing", executor_id)

    async def _clean_up(self, executor_id: int, state: PodState) -> None:
        async with self._cleanup_slots:
            await self._clean_up_now(executor_id, state)

    async def _clean_up_now(self, executor_id: int, state: PodState) -> None:
        try:
            if self.settings.delete_on_termination:
                await self._keep_log(executor_id, state)
                grace = int(self.settings.delete_grace_period) if self.settings.delete_grace_period is not None else None
                await self.api.delete_pod(state.name, grace_period_seconds=grace)
            else:
                await self.api.patch_pod_labels(state.name, {labels.INACTIVE: "true"})
        except Exception as e:
            logger.warning("cleaning up pod %s of executor %s failed (%s); `python -m dask_k8s_backend gc` removes it",
                           state.name, executor_id, e)

    async def _keep_log(self, executor_id: int, state: PodState) -> None:
        """The end of the pod's log, read while the pod still exists; a refusal (no pods/log) keeps nothing."""
        if self.kept_logs is None or self.kept_logs.per_executor <= 0:
            return
        try:
            text = await self.api.read_pod_log(state.name, tail_lines=TAIL_LINES)
        except Exception as e:
            logger.debug("could not keep the log of executor %s (pod %s): %s", executor_id, state.name, e)
            return
        self.kept_logs.keep(executor_id, state.name, text)
