"""Immutable snapshots of this app's executor pods, and the store that hands them to subscribers.

Data flow::

    watch source  ── update_pod(pod, deleted) ──┐
    polling source ── replace_snapshot(pods) ───┴─> SnapshotsStore ── batches ──> subscribers
                                                     (one new ExecutorPodsSnapshot   (allocator,
                                                      per update, in order)           lifecycle, plugin)

Sources only write the store; subscribers only read snapshots (values: never mutated). Updates
arriving between two reads are folded into one new :class:`ExecutorPodsSnapshot` (each pod's
latest state wins; ``changed`` names every pod that changed), so a ramp of thousands of watch
events costs one pod-map copy per delivery instead of one per event; a full resync always starts
a new snapshot, so order is kept. Each subscriber has its own buffer and its own interval: every
``interval`` seconds the buffered snapshots are handed over as one list, in order, and the
callback is awaited before the next batch, so a subscriber never runs concurrently with itself. ``DeterministicSnapshotsStore`` delivers only when a test calls
``notify_subscribers()``.

Interface used by the plugin::

    store = SnapshotsStore(clock=clock)
    store.add_subscriber(0.1, async_callback)     # async_callback(list[ExecutorPodsSnapshot])
    store.update_pod(pod, deleted=False); store.replace_snapshot(pods, resource_version="123")
    store.current                                  # latest snapshot
    await store.stop()

The executor id is the ``dask-k8s-backend/executor-id`` label; pods without a numeric one are
ignored (sources select by app label, so other apps' pods never arrive here).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from dask_k8s_backend import labels
from dask_k8s_backend.clock import Clock, SystemClock
from dask_k8s_backend.pods.states import PodState, classify

logger = logging.getLogger(__name__)

Pod = dict[str, Any]
SnapshotsCallback = Callable[[list["ExecutorPodsSnapshot"]], Awaitable[None]]


def executor_id_of(pod: Pod) -> int | None:
    """The executor id from the pod's label, or None when missing or not a whole number."""
    value = ((pod.get("metadata") or {}).get("labels") or {}).get(labels.EXECUTOR_ID)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def group_of_pod(pod: Pod) -> str:
    """The worker group from the pod's label (``default`` when absent)."""
    return ((pod.get("metadata") or {}).get("labels") or {}).get(labels.GROUP) or labels.DEFAULT_GROUP


def resource_version_of(pod: Pod) -> int | None:
    """The pod's resourceVersion as an int when it is one (kube-apiserver's are), else None."""
    try:
        return int((pod.get("metadata") or {}).get("resourceVersion"))
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class ExecutorPodsSnapshot:
    """One consistent view of the app's executor pods.

    ``executor_pods``: executor id -> PodState (deleted pods stay as ``PodDeleted`` until the next
    full snapshot). ``full_snapshot_ts``: clock time of the last full resync (``replace_snapshot``).
    ``seen_ids``: every executor id this store has ever seen, so a pod created and deleted between
    two deliveries still counts as seen. ``changed``: ids changed since the previous snapshot, or
    None for a full snapshot (readers then look at everything).
    """

    executor_pods: Mapping[int, PodState] = field(default_factory=lambda: MappingProxyType({}))
    full_snapshot_ts: float = 0.0
    seen_ids: frozenset[int] = frozenset()
    changed: frozenset[int] | None = None

    @property
    def is_full(self) -> bool:
        return self.changed is None

    def with_updates(self, states: Mapping[int, PodState]) -> ExecutorPodsSnapshot:
        pods = dict(self.executor_pods)
        pods.update(states)
        return ExecutorPodsSnapshot(MappingProxyType(pods), self.full_snapshot_ts, self.seen_ids | states.keys(),
                                    frozenset(states))

    def with_replacement(self, states: Mapping[int, PodState], ts: float) -> ExecutorPodsSnapshot:
        return ExecutorPodsSnapshot(MappingProxyType(dict(states)), ts, self.seen_ids | states.keys(), None)


class _SnapshotsBase:
    """Snapshot building shared by the real and the deterministic store."""

    def __init__(self, *, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self._current = ExecutorPodsSnapshot()
        self._dirty: dict[int, PodState] = {}
        self._buffers: list[list[ExecutorPodsSnapshot]] = []

    @property
    def current(self) -> ExecutorPodsSnapshot:
        """The latest snapshot, including every update received so far."""
        self.flush()
        return self._current

    def flush(self) -> None:
        """Fold the updates received since the last read into one new snapshot."""
        if self._dirty:
            dirty, self._dirty = self._dirty, {}
            self._publish(self._current.with_updates(dirty))

    def update_pod(self, pod: Pod, deleted: bool = False) -> None:
        """One pod changed (a watch event): a new snapshot with that pod's new state."""
        executor_id = executor_id_of(pod)
        if executor_id is None:
            logger.debug("ignoring pod %s: no numeric %s label", (pod.get("metadata") or {}).get("name"), labels.EXECUTOR_ID)
            return
        self._dirty[executor_id] = classify(pod, deleted=deleted)

    def replace_snapshot(self, pods: Iterable[Pod], resource_version: str | None = None) -> None:
        """A full list of the app's pods: a new full snapshot.

        With the list's ``resource_version``, pods the store already knows at a newer
        resourceVersion (changes the watch delivered after the list was taken) are kept, so a
        slow list never moves a pod back in time.
        """
        self.flush()
        states: dict[int, PodState] = {}
        for pod in pods:
            executor_id = executor_id_of(pod)
            if executor_id is not None:
                states[executor_id] = classify(pod)
        list_rv = _as_int(resource_version)
        if list_rv is not None:
            for executor_id, state in self._current.executor_pods.items():
                rv = resource_version_of(state.pod)
                if rv is not None and rv > list_rv:
                    states[executor_id] = state
        self._publish(self._current.with_replacement(states, self.clock.now()))

    def _publish(self, snapshot: ExecutorPodsSnapshot) -> None:
        self._current = snapshot
        for buffer in self._buffers:
            buffer.append(snapshot)


def _as_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class SnapshotsStore(_SnapshotsBase):
    """Snapshots delivered to each subscriber in batches on its own interval, never concurrently."""

    def __init__(self, *, clock: Clock | None = None) -> None:
        super().__init__(clock=clock)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False

    def add_subscriber(self, interval: float, callback: SnapshotsCallback) -> None:
        """Call ``await callback(snapshots)`` every ``interval`` seconds when there are new snapshots.

        The current snapshot is delivered first, so a subscriber added late starts from the present.
        """
        if self._stopped:
            raise RuntimeError("SnapshotsStore.add_subscriber: the store is stopped; create a new store.")
        if interval <= 0:
            raise ValueError(f"SnapshotsStore.add_subscriber: interval must be > 0 seconds, got {interval!r}.")
        buffer = [self.current]
        self._buffers.append(buffer)
        self._tasks.append(asyncio.create_task(self._deliver_forever(interval, buffer, callback)))

    async def _deliver_forever(self, interval: float, buffer: list[ExecutorPodsSnapshot], callback: SnapshotsCallback) -> None:
        while True:
            await self.clock.sleep(interval)
            self.flush()
            if not buffer:
                continue
            batch = buffer[:]
            del buffer[:]
            try:
                await callback(batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("snapshot subscriber %r failed on %d snapshots; it keeps receiving new ones", callback, len(batch))

    async def stop(self) -> None:
        """Stop delivering (idempotent); a callback in progress is cancelled."""
        self._stopped = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                logger.exception("snapshot subscriber task failed while stopping")


class DeterministicSnapshotsStore(_SnapshotsBase):
    """For tests: snapshots are delivered only when the test awaits :meth:`notify_subscribers`."""

    def __init__(self, *, clock: Clock | None = None) -> None:
        super().__init__(clock=clock)
        self._subscribers: list[tuple[list[ExecutorPodsSnapshot], SnapshotsCallback]] = []

    def add_subscriber(self, interval: float, callback: SnapshotsCallback) -> None:
        buffer = [self.current]
        self._buffers.append(buffer)
        self._subscribers.append((buffer, callback))

    async def notify_subscribers(self) -> None:
        """Deliver every buffered snapshot to every subscriber, awaiting each callback."""
        self.flush()
        for buffer, callback in self._subscribers:
            if buffer:
                batch = buffer[:]
                del buffer[:]
                await callback(batch)

    async def stop(self) -> None:
        self._subscribers.clear()
        self._buffers.clear()
