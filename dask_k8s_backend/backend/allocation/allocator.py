"""ExecutorPodsAllocator: per-group targets -> executor pod creations and deletions.

Data flow::

    set_target(n, group) ─┐                       ┌─> pod_factory(id, group) ─> api.create_pod (concurrent)
    kill_executors(ids) ──┼─> AllocatorState ─┐   │
    snapshots (store) ────┘                   ├─> plan(state, snapshot, now) ─> AllocationPlan ─┤
    known_executors() ───────────────────────┘                               ├─> api.delete_pod (concurrent)
                                                                             └─> on_pending_reason / FailureTracker

The module holds the plumbing; the policy lives beside it, pure and without HTTP, as Spark's
ExecutorPodsAllocator keeps its counting apart from its requests:

* :mod:`~dask_k8s_backend.backend.allocation.rules`: :func:`~dask_k8s_backend.backend.allocation.rules.plan`,
  the rules below, from one snapshot, the targets and the time (no I/O, no clock, no Dask);
* :mod:`~dask_k8s_backend.backend.allocation.pacing`: slow start, backoff and when the next round runs;
* :mod:`~dask_k8s_backend.backend.allocation.api_refusals`: what the API server's refusal of a creation means.

:class:`ExecutorPodsAllocator` only gathers the inputs, applies the returned frozen plan with the
:class:`~dask_k8s_backend.kube.pod_api.PodApi` (creations and deletions, concurrent, bounded) and
keeps the pace between rounds. Its logger, ``dask_k8s_backend.backend.allocation.allocator``, logs
what the allocation does.

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
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from dask_k8s_backend import labels
from dask_k8s_backend.clock import Clock, SystemClock
from dask_k8s_backend.config import AllocationSettings
from dask_k8s_backend.pods.verdicts import Allocatable
from ..executors.failures import FailureTracker
from ..executors.lifecycle import explain, is_failure
from ..observation.snapshots import ExecutorPodsSnapshot, group_of_pod
from .api_refusals import is_already_exists, is_quota_exceeded, is_transient, retry_after
from .pacing import after_creations, next_deadline
from .rules import AllocationPlan, AllocatorState, Created, Deletion, alive_by_group, plan

__all__ = ["AllocationPlan", "AllocatorState", "Created", "Deletion", "ExecutorPodsAllocator", "plan"]

logger = logging.getLogger(__name__)


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
        return set(alive_by_group(self._state, self._snapshot, unseen, self._state.deleting).get(group, []))

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
        """When a round must run even if no snapshot arrives (:func:`~dask_k8s_backend.backend.allocation.pacing.next_deadline`)."""
        now, state = self.clock.now(), self._state
        below = result.below_target or any(
            len(self.alive_ids(g)) < t for g, t in state.targets.items() if g not in state.blocked_groups
        )  # creations may have failed since the plan
        return next_deadline(self.settings, state, below, now)

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
                if is_already_exists(e):
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
        quota_full = any(is_quota_exceeded(e) for e in errors)
        pace = after_creations(
            self.settings, allowance=self._state.batch_allowance, error_streak=self._error_streak, attempted=attempted,
            failed=len(errors), retry_afters=[d for d in (retry_after(e) for e in errors) if d is not None],
            quota_full=quota_full, now=self.clock.now(),
        )
        self._error_streak = pace.error_streak
        if not errors:
            self._quota_hold = self._quota_message = None
        elif quota_full:
            # Wait for capacity: our own pods freeing it release the hold (_release_quota_hold);
            # other apps' pods are noticed by one-pod probes at the growing backoff.
            self._quota_hold = self._live_pods()
        self._state = replace(self._state, batch_allowance=pace.batch_allowance, creations_not_before=pace.creations_not_before)
