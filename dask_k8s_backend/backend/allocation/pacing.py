"""Slow start and backoff: how many pods the next round may create, and when the next round must run.

Why a module of its own: Spark creates ``batch-size`` pods per round and waits for them to appear;
we ramp round sizes 1, 2, 4, ... up to ``batch-size`` (``slow_start``), halve them on API errors and
push the next creating round back (``Retry-After`` of a 429 is honoured, else an exponential backoff
up to :data:`MAX_BACKOFF`). That policy is separate from the rules that spend the allowance
(:mod:`~dask_k8s_backend.backend.allocation.rules`) and from the requests that earn its inputs
(:class:`~dask_k8s_backend.backend.allocation.allocator.ExecutorPodsAllocator`): it is pure, sees
counts and delays rather than HTTP errors, and returns the new pace for the allocator to keep.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dask_k8s_backend.config import AllocationSettings
from .rules import AllocatorState

MAX_BACKOFF = 30.0


@dataclass(frozen=True)
class Pace:
    """The slow-start state after a round's creations: its round size, its earliest next creation, its error run."""

    batch_allowance: int
    creations_not_before: float
    error_streak: int


def after_creations(
    settings: AllocationSettings, *, allowance: int, error_streak: int, attempted: int, failed: int,
    retry_afters: Sequence[float], quota_full: bool, now: float,
) -> Pace:
    """Slow start: double the round size after a clean full round, halve it and back off after errors.

    ``failed`` creations of ``attempted`` were refused; ``retry_afters`` are the delays the server asked
    for; ``quota_full`` when one refusal was a full ResourceQuota (then one pod at a time probes for room).
    """
    if failed:
        error_streak += 1
        backoff = max(retry_afters) if retry_afters else min(MAX_BACKOFF, max(settings.batch_delay, 0.1) * 2 ** error_streak)
        allowance = max(1, allowance // 2) if settings.slow_start else allowance
        if quota_full:
            allowance = 1
        return Pace(allowance, now + backoff, error_streak)
    if settings.slow_start and attempted >= allowance:
        allowance = min(settings.batch_size, allowance * 2)
    return Pace(allowance, now + settings.batch_delay, 0)


def next_deadline(settings: AllocationSettings, state: AllocatorState, below_target: bool, now: float) -> float | None:
    """When a round must run even if no snapshot arrives: the next creating round, or a timeout."""
    deadlines = [since + settings.pending_timeout for _, since in state.pending_reasons.values()]
    if settings.unrecoverable_pending_confirm is not None:
        deadlines += [since + settings.unrecoverable_pending_confirm for since in state.unrecoverable_since.values()]
    deadlines += [c.time + settings.executor_timeout + 1e-3 for c in state.newly_created.values()]
    if below_target and settings.immediate_round and state.creations_not_before > now:
        deadlines.append(state.creations_not_before)  # else the next snapshot starts the next round
    future = [d for d in deadlines if d > now]
    return min(future) if future else None
