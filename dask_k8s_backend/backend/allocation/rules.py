"""The allocation rules: from one snapshot, the targets and the time, what a round creates and deletes.

Why a module of its own: these are the decisions of Spark's ExecutorPodsAllocator (what counts
toward a target, which pods time out, which are deleted first when above target, how many ids a
round hands out) and they are easiest to get right when they can be tried on a hand-made snapshot.
So :func:`plan` is pure: no I/O, no clock, no Dask, no HTTP. It reads an :class:`AllocatorState`
and an :class:`~dask_k8s_backend.backend.observation.snapshots.ExecutorPodsSnapshot` and returns a
frozen :class:`AllocationPlan`; :class:`~dask_k8s_backend.backend.allocation.allocator.ExecutorPodsAllocator`
gathers the inputs and applies the plan, and :mod:`~dask_k8s_backend.backend.allocation.pacing`
decides the round sizes (``batch_allowance``) and when creations may start (``creations_not_before``)
that these rules obey.

The rules themselves are listed in the allocator's module docstring.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from dask_k8s_backend.config import AllocationSettings
from dask_k8s_backend.pods.states import PodPending, PodRunning, PodState, PodUnknown
from dask_k8s_backend.pods.verdicts import Allocatable, unrecoverable_reason
from ..observation.snapshots import ExecutorPodsSnapshot, group_of_pod

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
    """A pod a round deletes; ``reason`` is logged and kept for the user, ``failure`` counts it as one."""

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
    alive = alive_by_group(state, snapshot, unseen, gone)
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


def alive_by_group(
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
