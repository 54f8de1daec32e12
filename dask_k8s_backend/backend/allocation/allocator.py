"""ExecutorPodsAllocator: per-group targets -> executor pod creations and deletions.

Data flow::

    set_target(n, group) ─┐                       ┌─> pod_factory(id, group) ─> api.create_pod (concurrent)
    kill_executors(ids) ──┼─> AllocatorState ─┐   │
    snapshots (store) ────┘                   ├─> plan(state, snapshot, now) ─> AllocationPlan ─┤
    known_executors() ───────────────────────┘                               ├─> api.delete_pod (concurrent)
                                                                             └─> on_pending_reason / FailureTracker

The rules live in the pure function :func:`plan` (no I/O, no clock, no Dask); the
:class:`ExecutorPodsAllocator` only gathers its inputs, applies the returned frozen plan with the
:class:`~dask_k8s_backend.kube.pod_api.PodApi`, and decides when the next round runs.

Rules (Spark's, with its stalls removed where the settings say so):

* executor ids count from 1, are unique across groups and never reused;
* running + pending + created-but-not-yet-seen pods count toward a group's target; final-state and
  terminating pods do not, so they are replaced;
* creations not seen within ``executor-timeout`` are deleted and counted as failures;
* a pod Pending with a reason (Unschedulable, ErrImagePull, ...) is reported once per reason and,
  after ``pending-timeout`` with a reason, deleted and counted as a failure;
* a pod Pending for a reason waiting cannot fix (:mod:`~dask_k8s_backend.pods.verdicts`: unusable
  image, missing Secret/ConfigMap, a request no node can hold) for ``unrecoverable-pending-confirm``
  is deleted and its group blocked at once, with the reason and the fix;
* ``max-pending-pods`` bounds pending + unseen pods over all groups;
* above target: pending pods the scheduler does not know go first (newest first), then running
  pods it does not know; workers the scheduler asked to kill (``kill_executors``, after it retired
  them) are always deleted;
* a blocked group (:class:`~dask_k8s_backend.backend.executors.failures.FailureTracker`) gets no new pods;
* ``slow_start``: round sizes 1, 2, 4, ... up to ``batch-size``, halved on API errors, and rounds
  do not wait for earlier creations to appear; without it (Spark), a group gets ``batch-size`` pods
  per round and only when none of its creations is still unseen;
* ``immediate_round``: ``set_target`` starts a round at once; without it (Spark), the next
  snapshot delivery does. Rounds that create pods are ``batch-delay`` apart while below target;
  API errors push the next creating round back (``Retry-After`` of a 429 is honoured).

Interface used by the plugin::

    allocator = ExecutorPodsAllocator(api=api, settings=settings.allocation, pod_factory=build_pod,
                                      failures=tracker, clock=clock, known_executors=ids_fn,
                                      on_pending_reason=cb, delete_grace_period=30, nodes=allocatables_fn)
    allocator.start(store)          # subscribes at batch-delay
    allocator.set_target(10, "default"); allocator.kill_executors([3, 4])
    allocator.targets(); allocator.alive_ids(group); allocator.group_of(id); allocator.pod_name(id)
    allocator.outstanding(); allocator.pods_created; await allocator.stop()
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from dask_k8s_backend import labels
from dask_k8s_backend.clock import Clock, SystemClock
from dask_k8s_backend.config import AllocationSettings
from dask_k8s_backend.pods.states import PodPending, PodRunning, PodState, PodUnknown
from dask_k8s_backend.pods.verdicts import Allocatable, unrecoverable_reason
from ..executors.failures import FailureTracker
from ..executors.lifecycle import explain, is_failure
from ..observation.snapshots import ExecutorPodsSnapshot, group_of_pod

logger = logging.getLogger(__name__)

MAX_BACKOFF = 30.0
TRANSIENT_CODES = {429, 500, 502, 503, 504}

try:  # the pending-reason reader of pods/exits.py
    from dask_k8s_backend.pods.exits import pending_reason
except ImportError:  # pragma: no cover - exits.py is part of the project
    pending_reason = None  # type: ignore[assignment]


# ---------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Created:
    """A pod we asked for and have not seen in a snapshot yet."""

    group: str
    name: str
    time: float


@dataclass(frozen=True)
class Deletion:
    executor_id: int
    name: str
    group: str
    reason: str
    failure: bool = False


@dataclass(frozen=True)
class AllocatorState:
    """Everything :func:`plan` needs besides the snapshot and the time."""

    settings: AllocationSettings
    targets: Mapping[str, int] = field(default_factory=dict)
    next_executor_id: int = 1
    newly_created: Mapping[int, Created] = field(default_factory=dict)
    deleting: frozenset[int] = frozenset()
    kill_requested: frozenset[int] = frozenset()
    known_executors: frozenset[int] = frozenset()
    pending_reasons: Mapping[int, tuple[str, float]] = field(default_factory=dict)
    unrecoverable_since: Mapping[int, float] = field(default_factory=dict)
    nodes: tuple[Allocatable, ...] | None = None  # every node's allocatable; None when they cannot be listed
    blocked_groups: frozenset[str] = frozenset()
    batch_allowance: int = 1
    creations_not_before: float = 0.0


@dataclass(frozen=True)
class AllocationPlan:
    """What one round does; applied by :class:`ExecutorPodsAllocator`."""

    creations: Mapping[str, tuple[int, ...]]
    deletions: tuple[Deletion, ...]
    timed_out: tuple[int, ...]
    pending_reports: tuple[tuple[int, str], ...]
    pending_reasons: Mapping[int, tuple[str, float]]
    next_executor_id: int
    below_target: bool
    unrecoverable_since: Mapping[int, float] = field(default_factory=dict)
    blocks: tuple[tuple[str, str], ...] = ()  # (group, why): groups that can never start a pod as they are

    @property
    def creation_count(self) -> int:
        return sum(len(ids) for ids in self.creations.values())


# ---------------------------------------------------------------------------------------------- rules
def plan(state: AllocatorState, snapshot: ExecutorPodsSnapshot, now: float) -> AllocationPlan:
    """The allocation rules: pure, so every rule is testable with a hand-made snapshot."""
    unseen = {i: c for i, c in state.newly_created.items() if i not in snapshot.seen_ids}
    deletions = _creation_timeouts(state, unseen, now)
    reports, reasons, pending_deletions = _pending_rules(state, snapshot, now)
    verdicts, hopeless, blocks = _unrecoverable_rules(state, snapshot, now)
    pending_deletions = [d for d in pending_deletions if d.executor_id not in {h.executor_id for h in hopeless}]
    deletions += hopeless + pending_deletions + _kills(state, snapshot)
    state = replace(state, blocked_groups=state.blocked_groups | {group for group, _ in blocks})
    gone = state.deleting | {d.executor_id for d in deletions}
    alive = _alive_by_group(state, snapshot, unseen, gone)
    deletions += _scale_down(state, snapshot, alive)
    gone |= {d.executor_id for d in deletions}
    alive = {g: [i for i in ids if i not in gone] for g, ids in alive.items()}
    creations, next_id = _creations(state, snapshot, unseen, alive, now)
    created = {g: len(ids) for g, ids in creations.items()}
    below = any(
        len(alive.get(g, [])) + created.get(g, 0) < t for g, t in state.targets.items() if g not in state.blocked_groups
    )
    timed_out = tuple(d.executor_id for d in deletions if d.executor_id in unseen)
    return AllocationPlan(
        MappingProxyType(creations), tuple(deletions), timed_out, reports, MappingProxyType(reasons), next_id, below,
        MappingProxyType(verdicts), blocks,
    )


def _creation_timeouts(state: AllocatorState, unseen: Mapping[int, Created], now: float) -> list[Deletion]:
    timeout = state.settings.executor_timeout
    return [
        Deletion(
            i, c.name, c.group,
            f"executor {i} (pod {c.name}) was created {now - c.time:.0f} s ago but never appeared in the pod list "
            f"(k8s-backend.allocation.executor-timeout = {timeout:g} s); the API server may have lost the request "
            "or the pod was deleted before the backend saw it. It was deleted and will be replaced.",
            failure=True,
        )
        for i, c in sorted(unseen.items())
        if now - c.time > timeout and i not in state.deleting
    ]


def _reason_of(state: PodState) -> str | None:
    if not isinstance(state, PodPending):
        return None
    if pending_reason is not None:
        return pending_reason(state.pod)
    return _fallback_pending_reason(state.pod)


def _fallback_pending_reason(pod: dict[str, Any]) -> str | None:
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return f"{condition.get('reason')}: {condition.get('message', '')}"
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
            return f"{waiting['reason']}: {waiting.get('message', '')}"
    return None


def _pending_rules(
    state: AllocatorState, snapshot: ExecutorPodsSnapshot, now: float
) -> tuple[tuple[tuple[int, str], ...], dict[int, tuple[str, float]], list[Deletion]]:
    """Report new pending reasons; delete pods pending with a reason for longer than pending-timeout."""
    reports, reasons, deletions = [], {}, []
    timeout = state.settings.pending_timeout
    for executor_id, pod_state in snapshot.executor_pods.items():
        reason = _reason_of(pod_state)
        if reason is None or executor_id in state.deleting:
            continue
        previous = state.pending_reasons.get(executor_id)
        since = previous[1] if previous else now
        if previous is None or previous[0] != reason:
            reports.append((executor_id, reason))
        reasons[executor_id] = (reason, since)
        if now - since >= timeout:
            deletions.append(Deletion(
                executor_id, pod_state.name, group_of_pod(pod_state.pod),
                f"executor {executor_id} stayed pending for {now - since:.0f} s "
                f"(k8s-backend.allocation.pending-timeout = {timeout:g} s) and was deleted: {reason}",
                failure=True,
            ))
    return tuple(reports), reasons, deletions


def _unrecoverable_rules(
    state: AllocatorState, snapshot: ExecutorPodsSnapshot, now: float
) -> tuple[dict[int, float], list[Deletion], tuple[tuple[str, str], ...]]:
    """Pods that waiting cannot start: after the confirmation, delete them and block their group."""
    confirm = state.settings.unrecoverable_pending_confirm
    since: dict[int, float] = {}
    deletions: list[Deletion] = []
    blocks: dict[str, str] = {}
    if confirm is None:
        return since, deletions, ()
    for executor_id, pod_state in sorted(snapshot.executor_pods.items()):
        if not isinstance(pod_state, PodPending) or executor_id in state.deleting:
            continue
        verdict = unrecoverable_reason(pod_state.pod, state.nodes)
        if verdict is None:
            continue
        since[executor_id] = first = state.unrecoverable_since.get(executor_id, now)
        if now - first < confirm:
            continue
        group = group_of_pod(pod_state.pod)
        detail = _reason_of(pod_state) or verdict
        deletions.append(Deletion(
            executor_id, pod_state.name, group,
            f"executor {executor_id} cannot start by waiting ({verdict}; seen for {now - first:.0f} s, "
            f"k8s-backend.allocation.unrecoverable-pending-confirm = {confirm:g} s) and was deleted: {detail}",
            failure=True,
        ))
        blocks.setdefault(group, (
            f"Worker group {group!r} stopped creating workers: its pods can never start as they are. "
            f"Executor {executor_id} cannot start: {verdict}. {detail} Fix this, then recreate the cluster or the worker group."))
    return since, deletions, tuple(sorted(blocks.items()))


def _kills(state: AllocatorState, snapshot: ExecutorPodsSnapshot) -> list[Deletion]:
    deletions = []
    for executor_id in sorted(state.kill_requested - state.deleting):
        pod_state = snapshot.executor_pods.get(executor_id)
        created = state.newly_created.get(executor_id)
        if isinstance(pod_state, (PodRunning, PodPending, PodUnknown)):
            deletions.append(Deletion(executor_id, pod_state.name, group_of_pod(pod_state.pod),
                                      f"executor {executor_id} was removed by the scheduler (scale down)."))
        elif pod_state is None and created is not None:
            deletions.append(Deletion(executor_id, created.name, created.group,
                                      f"executor {executor_id} was removed by the scheduler (scale down)."))
    return deletions


def _alive_by_group(
    state: AllocatorState, snapshot: ExecutorPodsSnapshot, unseen: Mapping[int, Created], gone: frozenset[int] | set[int]
) -> dict[str, list[int]]:
    """Ids counting toward each group's target: running, pending/unknown, and unseen creations."""
    alive: dict[str, list[int]] = {}
    for executor_id, pod_state in snapshot.executor_pods.items():
        if executor_id not in gone and isinstance(pod_state, (PodRunning, PodPending, PodUnknown)):
            alive.setdefault(group_of_pod(pod_state.pod), []).append(executor_id)
    for executor_id, created in unseen.items():
        if executor_id not in gone:
            alive.setdefault(created.group, []).append(executor_id)
    return alive


def _scale_down(state: AllocatorState, snapshot: ExecutorPodsSnapshot, alive: Mapping[str, list[int]]) -> list[Deletion]:
    """Above target: delete pods the scheduler does not know, pending ones first, newest first."""
    deletions = []
    for group, ids in sorted(alive.items()):
        excess = len(ids) - state.targets.get(group, 0)
        if excess <= 0:
            continue
        seen = [i for i in ids if i in snapshot.executor_pods and i not in state.known_executors]
        pending = sorted((i for i in seen if not isinstance(snapshot.executor_pods[i], PodRunning)), reverse=True)
        running = sorted((i for i in seen if isinstance(snapshot.executor_pods[i], PodRunning)), reverse=True)
        for executor_id in (pending + running)[:excess]:
            deletions.append(Deletion(
                executor_id, snapshot.executor_pods[executor_id].name, group,
                f"executor {executor_id} was not needed: worker group {group!r} is above its target of "
                f"{state.targets.get(group, 0)} and this worker had not joined the scheduler yet.",
            ))
    return deletions


def _creations(
    state: AllocatorState, snapshot: ExecutorPodsSnapshot, unseen: Mapping[int, Created],
    alive: Mapping[str, list[int]], now: float,
) -> tuple[dict[str, tuple[int, ...]], int]:
    """New executor ids per group below target, within the round's allowance and max-pending-pods."""
    settings = state.settings
    if now < state.creations_not_before:
        return {}, state.next_executor_id
    room = state.batch_allowance if settings.slow_start else settings.batch_size
    if settings.max_pending_pods > 0:
        pending = sum(1 for ids in alive.values() for i in ids if not isinstance(snapshot.executor_pods.get(i), PodRunning))
        room = min(room, settings.max_pending_pods - pending)
    creations: dict[str, tuple[int, ...]] = {}
    next_id = state.next_executor_id
    for group, target in sorted(state.targets.items()):
        if room <= 0:
            break
        if group in state.blocked_groups:
            continue
        if not settings.slow_start and any(c.group == group for c in unseen.values()):
            continue  # Spark: one batch outstanding at a time per group
        count = min(target - len(alive.get(group, [])), room if settings.slow_start else min(room, settings.batch_size))
        if count > 0:
            creations[group] = tuple(range(next_id, next_id + count))
            next_id += count
            room -= count
    return creations, next_id


# ---------------------------------------------------------------------------------------------- errors
def _status_code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    if code is None:
        code = getattr(exc, "status", None)
        code = getattr(code, "code", code.get("code") if isinstance(code, dict) else code)
    return code if isinstance(code, int) else None


def _retry_after(exc: BaseException) -> float | None:
    value = getattr(exc, "retry_after", None)
    if value is None:
        headers = getattr(exc, "headers", None) or {}
        value = headers.get("Retry-After") if isinstance(headers, dict) else None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def is_quota_exceeded(exc: BaseException) -> bool:
    """A 403 from the ResourceQuota admission: the namespace is full, the pod is fine."""
    return _status_code(exc) == 403 and "exceeded quota" in str(exc)


def is_quota_status_unknown(exc: BaseException) -> bool:
    """A 403 from upstream's ResourceQuota admission for a quota whose status the quota controller has not
    filled yet (just created): nothing is wrong with the pod, and the answer changes within moments."""
    return _status_code(exc) == 403 and "status unknown for quota" in str(exc)


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying later (throttling, server trouble, connection loss, a full quota, a quota not yet
    counted), not the pod's fault."""
    code = _status_code(exc)
    if not code:
        return True  # unreachable API server (ApiUnreachable has code 0), timeouts
    if is_quota_exceeded(exc) or is_quota_status_unknown(exc):
        return True  # retried when capacity frees or the quota controller has counted; the message says which
    return code in TRANSIENT_CODES


# ---------------------------------------------------------------------------------------------- executor
class ExecutorPodsAllocator:
    """Applies :func:`plan` with the Pod API; owns the allocation state and the round timing."""

    def __init__(
        self,
        *,
        api: Any,
        settings: AllocationSettings,
        pod_factory: Callable[[int, str], dict],
        failures: FailureTracker,
        clock: Clock | None = None,
        known_executors: Callable[[], Iterable[int]] = frozenset,
        on_pending_reason: Callable[[int, str], None] | None = None,
        delete_grace_period: float | None = None,
        max_concurrent_requests: int = 32,
        nodes: Callable[[], tuple[Allocatable, ...] | None] = lambda: None,
    ) -> None:
        self.api = api
        self.nodes = nodes
        self.settings = settings
        self.pod_factory = pod_factory
        self.failures = failures
        self.clock = clock or SystemClock()
        self.known_executors = known_executors
        self.on_pending_reason = on_pending_reason
        self.delete_grace_period = delete_grace_period
        self._semaphore = asyncio.Semaphore(max_concurrent_requests)
        self._state = AllocatorState(settings=settings, batch_allowance=1 if settings.slow_start else settings.batch_size)
        self._snapshot = ExecutorPodsSnapshot()
        self._names: dict[int, tuple[str, str]] = {}  # executor id -> (pod name, group), for the plugin
        self._error_streak = 0
        self._quota_hold: int | None = None  # our live pods when a creation hit a full quota
        self._quota_message: str | None = None
        self.quota_refusals = 0
        self._round_requested = False
        self._round_task: asyncio.Task[None] | None = None
        self._timer: asyncio.Task[None] | None = None
        self._timer_at: float | None = None
        self._stopped = False
        self.pods_created = 0
        self.rounds = 0

    # ------------------------------------------------------------------ plugin interface
    def start(self, store: Any, interval: float | None = None) -> None:
        """Subscribe to the store; rounds run on snapshot deliveries (every ``batch-delay`` by default)."""
        store.add_subscriber(interval or self.settings.batch_delay or 0.1, self.on_snapshots)

    def set_target(self, n: int, group: str = labels.DEFAULT_GROUP) -> None:
        """Desired number of workers in ``group``; with immediate_round a round starts now."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"set_target: the number of workers for group {group!r} must be a whole number >= 0, got {n!r}.")
        self._state = replace(self._state, targets={**self._state.targets, group: n})
        self.failures.note_target(group, n)
        if self.settings.immediate_round:
            if self._error_streak == 0:
                self._state = replace(self._state, creations_not_before=0.0)
            self.request_round()

    def kill_executors(self, executor_ids: Iterable[int]) -> None:
        """Delete these executors' pods (the scheduler has retired their workers)."""
        self._state = replace(self._state, kill_requested=self._state.kill_requested | frozenset(executor_ids))
        self.request_round()

    def targets(self) -> dict[str, int]:
        return dict(self._state.targets)

    def outstanding(self) -> int:
        """Pods asked for and not yet seen in a snapshot."""
        return sum(1 for i in self._state.newly_created if i not in self._snapshot.seen_ids)

    def alive_ids(self, group: str = labels.DEFAULT_GROUP) -> set[int]:
        unseen = {i: c for i, c in self._state.newly_created.items() if i not in self._snapshot.seen_ids}
        return set(_alive_by_group(self._state, self._snapshot, unseen, self._state.deleting).get(group, []))

    def group_of(self, executor_id: int) -> str | None:
        entry = self._names.get(executor_id)
        if entry is not None:
            return entry[1]
        pod_state = self._snapshot.executor_pods.get(executor_id)
        return group_of_pod(pod_state.pod) if pod_state is not None else None

    def pod_name(self, executor_id: int) -> str | None:
        entry = self._names.get(executor_id)
        if entry is not None:
            return entry[0]
        pod_state = self._snapshot.executor_pods.get(executor_id)
        return pod_state.name if pod_state is not None else None

    @property
    def state(self) -> AllocatorState:
        return self._state

    async def stop(self) -> None:
        """Stop running rounds (idempotent); pods are left to the plugin's shutdown."""
        self._stopped = True
        for task in (self._timer, self._round_task):
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass

    # ------------------------------------------------------------------ rounds
    async def on_snapshots(self, snapshots: list[ExecutorPodsSnapshot]) -> None:
        """Store subscriber: take the latest snapshot and run a round (awaited: back-pressure)."""
        if snapshots:
            self._snapshot = snapshots[-1]
        self.request_round()
        await self.wait_idle()

    def request_round(self) -> None:
        """Run a round soon; requests made while one runs are merged into one more round."""
        if self._stopped:
            return
        self._round_requested = True
        if self._round_task is None or self._round_task.done():
            self._round_task = asyncio.create_task(self._run_rounds())

    async def wait_idle(self) -> None:
        """Wait until no round is running or requested (tests and snapshot back-pressure)."""
        while self._round_task is not None and not self._round_task.done():
            await asyncio.shield(self._round_task)

    async def _run_rounds(self) -> None:
        while self._round_requested and not self._stopped:
            self._round_requested = False
            try:
                await self.run_round()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("allocation round failed; the next snapshot starts a new one")

    async def run_round(self) -> AllocationPlan:
        """One round: refresh inputs, plan, apply, schedule the next creating round if needed."""
        self._refresh_state()
        now = self.clock.now()
        result = plan(self._state, self._snapshot, now)
        self.rounds += 1
        await self._apply(result, now)
        wake = self._next_deadline(result)
        if wake is not None:
            self._arm_timer(wake)
        return result

    def _next_deadline(self, result: AllocationPlan) -> float | None:
        """When a round must run even if no snapshot arrives: the next creating round, or a timeout."""
        now, state, settings = self.clock.now(), self._state, self.settings
        deadlines = [since + settings.pending_timeout for _, since in state.pending_reasons.values()]
        if settings.unrecoverable_pending_confirm is not None:
            deadlines += [since + settings.unrecoverable_pending_confirm for since in state.unrecoverable_since.values()]
        deadlines += [c.time + settings.executor_timeout + 1e-3 for c in state.newly_created.values()]
        below = result.below_target or any(
            len(self.alive_ids(g)) < t for g, t in state.targets.items() if g not in state.blocked_groups
        )  # creations may have failed since the plan
        if below and settings.immediate_round and state.creations_not_before > now:
            deadlines.append(state.creations_not_before)  # else the next snapshot starts the next round
        future = [d for d in deadlines if d > now]
        return min(future) if future else None

    def _count_new_failures(self) -> None:
        """Count failed pods the moment a round sees them, before replacing them.

        The lifecycle manager counts them too, on its own interval; ``record_failure`` counts each
        executor once, so whichever sees a failure first counts it. Without this a round could replace
        a failed pod before the failure was counted and so create pods past ``max-failures``.
        """
        for executor_id, pod_state in self._snapshot.executor_pods.items():
            if not pod_state.is_final or self.failures.deletion_reason(executor_id) is not None:
                continue
            if is_failure(pod_state):
                self.failures.record_failure(group_of_pod(pod_state.pod), executor_id, explain(pod_state, executor_id))

    def _refresh_state(self) -> None:
        self._count_new_failures()
        snapshot, state = self._snapshot, self._state
        present = snapshot.executor_pods
        finished = {i for i in state.deleting if i in snapshot.seen_ids and (i not in present or present[i].is_final)}
        next_id = max(state.next_executor_id, max(snapshot.seen_ids, default=0) + 1)
        self._state = replace(
            state,
            next_executor_id=next_id,
            newly_created={i: c for i, c in state.newly_created.items() if i not in snapshot.seen_ids},
            deleting=state.deleting - finished,
            kill_requested=state.kill_requested - finished,
            known_executors=frozenset(self.known_executors()),
            nodes=self.nodes(),
            blocked_groups=self.failures.blocked_groups() | frozenset(g for g in state.targets if self.failures.is_blocked(g)),
        )
        self._release_quota_hold()

    def _live_pods(self) -> int:
        return sum(len(self.alive_ids(g)) for g in self._state.targets)

    def _release_quota_hold(self) -> None:
        """One of our pods finished or went away since a creation hit the full quota: retry at once."""
        if self._quota_hold is not None and self._live_pods() < self._quota_hold:
            logger.info("quota capacity freed by our own pods; creating again")
            self._quota_hold = None
            self._quota_message = None
            self._error_streak = 0
            self._state = replace(self._state, creations_not_before=0.0)

    def _arm_timer(self, at: float) -> None:
        if self._timer is not None and not self._timer.done():
            if self._timer_at is not None and self._timer_at <= at:
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.create_task(self._wake_at(at))

    async def _wake_at(self, at: float) -> None:
        await self.clock.sleep(at - self.clock.now())
        self.request_round()

    # ------------------------------------------------------------------ applying a plan
    async def _apply(self, result: AllocationPlan, now: float) -> None:
        self._state = replace(self._state, pending_reasons=result.pending_reasons, next_executor_id=result.next_executor_id,
                              unrecoverable_since=result.unrecoverable_since)
        for executor_id, reason in result.pending_reports:
            self._report_pending(executor_id, reason)
        for group, message in result.blocks:
            self.failures.block(group, message)
        await asyncio.gather(self._delete_all(result.deletions), self._create_all(result, now))

    async def _delete_all(self, deletions: tuple[Deletion, ...]) -> None:
        if not deletions:
            return
        ids = frozenset(d.executor_id for d in deletions)
        self._state = replace(
            self._state,
            deleting=self._state.deleting | ids,
            newly_created={i: c for i, c in self._state.newly_created.items() if i not in ids},
        )
        for d in deletions:
            self.failures.mark_deleted_on_purpose(d.executor_id, d.reason)
            if d.failure:
                self.failures.record_failure(d.group, d.executor_id, d.reason)
                logger.warning("%s", d.reason)
            else:
                logger.info("%s", d.reason)
        await asyncio.gather(*(self._delete(d) for d in deletions))

    async def _delete(self, deletion: Deletion) -> None:
        async with self._semaphore:
            try:
                grace = None if self.delete_grace_period is None else int(self.delete_grace_period)
                await self.api.delete_pod(deletion.name, grace_period_seconds=grace)
            except Exception as e:
                logger.warning("deleting pod %s of executor %s failed (%s); it is retried on a later round",
                               deletion.name, deletion.executor_id, e)
                self._state = replace(self._state, deleting=self._state.deleting - {deletion.executor_id})

    async def _create_all(self, result: AllocationPlan, now: float) -> None:
        jobs = []
        newly = dict(self._state.newly_created)
        for group, ids in result.creations.items():
            for executor_id in ids:
                pod = self.pod_factory(executor_id, group)
                name = pod["metadata"]["name"]
                newly[executor_id] = Created(group, name, now)
                self._names[executor_id] = (name, group)
                jobs.append(self._create(executor_id, group, pod))
        if not jobs:
            return
        self._state = replace(self._state, newly_created=newly)
        outcomes = await asyncio.gather(*jobs)
        self._after_creations(outcomes, len(jobs))

    async def _create(self, executor_id: int, group: str, pod: dict) -> BaseException | None:
        async with self._semaphore:
            if self.failures.is_blocked(group):  # blocked while this request waited for its turn: not sent
                self._forget_creation(executor_id)
                return None
            try:
                await self.api.create_pod(pod)
                self.pods_created += 1
                return None
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if _status_code(e) == 409 and getattr(e, "reason", "AlreadyExists") == "AlreadyExists":
                    return None  # a retried request whose first attempt created the pod
                self._creation_failed(executor_id, group, pod, e)
                return e

    def _forget_creation(self, executor_id: int) -> None:
        self._state = replace(self._state, newly_created={i: c for i, c in self._state.newly_created.items() if i != executor_id})

    def _creation_failed(self, executor_id: int, group: str, pod: dict, exc: BaseException) -> None:
        self._forget_creation(executor_id)
        if is_quota_exceeded(exc):
            self._quota_refused(executor_id, exc)
            return
        if is_transient(exc):
            logger.warning("creating pod %s for executor %s failed (%s); backing off", pod["metadata"]["name"], executor_id, exc)
            return
        message = (f"creating the pod of executor {executor_id} (worker group {group!r}) was refused by the API server: "
                   f"{exc}. Fix the worker settings or pod template of this group.")
        logger.error("%s", message)
        self.failures.record_failure(group, executor_id, message)

    def _quota_refused(self, executor_id: int, exc: BaseException) -> None:
        """Report a full quota once per distinct message (it carries the quota's numbers)."""
        self.quota_refusals += 1
        message = (f"creating a worker pod was refused because the namespace's ResourceQuota is used up "
                   f"({exc}); the backend creates it when capacity frees")
        text = str(exc)
        key = text[text.find("exceeded quota"):]  # the quota's numbers, without the pod's name
        if key != self._quota_message:
            self._quota_message = key
            self._report_pending(executor_id, message)

    def _report_pending(self, executor_id: int, reason: str) -> None:
        """Said once: to the owner, who shows it to the user (and logs it), or to the log when there is none."""
        if self.on_pending_reason is None:
            logger.warning("executor %s is pending: %s", executor_id, reason)
        else:
            self.on_pending_reason(executor_id, reason)

    def _after_creations(self, outcomes: list[BaseException | None], attempted: int) -> None:
        """Slow start: double the round size after a clean full round, halve it and back off after errors."""
        errors = [e for e in outcomes if e is not None]
        now = self.clock.now()
        allowance = self._state.batch_allowance
        if errors:
            self._error_streak += 1
            delays = [d for d in (_retry_after(e) for e in errors) if d is not None]
            backoff = max(delays) if delays else min(MAX_BACKOFF, max(self.settings.batch_delay, 0.1) * 2 ** self._error_streak)
            allowance = max(1, allowance // 2) if self.settings.slow_start else allowance
            if any(is_quota_exceeded(e) for e in errors):
                # Wait for capacity: our own pods freeing it release the hold (_release_quota_hold);
                # other apps' pods are noticed by one-pod probes at the growing backoff.
                self._quota_hold = self._live_pods()
                allowance = 1
            not_before = now + backoff
        else:
            self._error_streak = 0
            self._quota_hold = self._quota_message = None
            if self.settings.slow_start and attempted >= allowance:
                allowance = min(self.settings.batch_size, allowance * 2)
            not_before = now + self.settings.batch_delay
        self._state = replace(self._state, batch_allowance=allowance, creations_not_before=not_before)
