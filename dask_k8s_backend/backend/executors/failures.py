"""Executor failures per worker group, shared by the allocator and the lifecycle manager.

Data flow: the lifecycle manager records final-state failures, the allocator records creation
and pending timeouts and marks the pods it deletes on purpose (scale-down, kill); the allocator
reads :meth:`FailureTracker.is_blocked` before creating pods for a group, and the lifecycle
manager reads :meth:`deletion_reason` / :meth:`explanation` to explain a pod's end. Neither
component calls the other: this small object is the only thing they share.

A group is blocked while its failures inside ``failures-validity-interval`` (all failures when
unset) reach ``max-failures`` (default ``max(3, 2 x the largest target ever set for the group)``);
``on_failure_limit(group, message)`` is called each time a group becomes blocked. Groups are
independent: a broken GPU template does not stop CPU workers.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from dask_k8s_backend.clock import Clock
from dask_k8s_backend.config import ExecutorSettings

logger = logging.getLogger(__name__)

LAST_EXPLANATIONS = 3


@dataclass(frozen=True)
class Failure:
    executor_id: int
    group: str
    explanation: str
    time: float


class FailureTracker:
    """Counts failures per group inside the validity window and blocks a group at the limit."""

    def __init__(
        self,
        *,
        settings: ExecutorSettings,
        clock: Clock,
        on_failure_limit: Callable[[str, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.on_failure_limit = on_failure_limit
        self._failures: dict[str, deque[Failure]] = {}
        self._explanations: dict[int, str] = {}
        self._on_purpose: dict[int, str] = {}
        self._max_target: dict[str, int] = {}
        self._blocked: set[str] = set()
        self._blocked_for_good: set[str] = set()  # block(): retrying cannot help, failures never age out

    # ------------------------------------------------------------------ inputs
    def note_target(self, group: str, target: int) -> None:
        """The default limit follows the largest target ever asked of the group."""
        self._max_target[group] = max(self._max_target.get(group, 0), target)

    def mark_deleted_on_purpose(self, executor_id: int, reason: str) -> None:
        """The backend deletes this pod itself (scale-down, kill, timeout): not an outside deletion."""
        self._on_purpose.setdefault(executor_id, reason)

    def record_failure(self, group: str, executor_id: int, explanation: str) -> None:
        """Count one failure (once per executor) and block the group if the limit is reached."""
        if executor_id in self._explanations:
            return
        self._explanations[executor_id] = explanation
        self._failures.setdefault(group, deque()).append(Failure(executor_id, group, explanation, self.clock.now()))
        self._check_limit(group)

    def block(self, group: str, message: str) -> None:
        """Stop replacing the group's workers now, whatever the count: e.g. its image runs other versions."""
        self._blocked_for_good.add(group)
        if group not in self._blocked:
            self._stop_group(group, message)

    def reset(self, group: str) -> None:
        """Forget a group's failures and unblock it (e.g. after the user fixed its template)."""
        self._failures.pop(group, None)
        self._blocked.discard(group)
        self._blocked_for_good.discard(group)

    # ------------------------------------------------------------------ reads
    def max_failures(self, group: str) -> int:
        if self.settings.max_failures is not None:
            return self.settings.max_failures
        return max(3, 2 * self._max_target.get(group, 0))

    def failure_count(self, group: str) -> int:
        return len(self._recent(group))

    def is_blocked(self, group: str) -> bool:
        if (group in self._blocked and group not in self._blocked_for_good
                and self.failure_count(group) < self.max_failures(group)):
            self._blocked.discard(group)  # failures aged out of the validity window
            logger.info("worker group %s: failures aged out of the validity window; replacing workers again", group)
        return group in self._blocked

    def blocked_groups(self) -> frozenset[str]:
        return frozenset(g for g in list(self._blocked) if self.is_blocked(g))

    def explanation(self, executor_id: int) -> str | None:
        return self._explanations.get(executor_id)

    def deletion_reason(self, executor_id: int) -> str | None:
        return self._on_purpose.get(executor_id)

    # ------------------------------------------------------------------ internals
    def _recent(self, group: str) -> deque[Failure]:
        failures = self._failures.get(group, deque())
        window = self.settings.failures_validity_interval
        if window is not None:
            horizon = self.clock.now() - window
            while failures and failures[0].time < horizon:
                failures.popleft()
        return failures

    def _check_limit(self, group: str) -> None:
        count, limit = self.failure_count(group), self.max_failures(group)
        if count < limit or group in self._blocked:
            return
        self._stop_group(group, self._limit_message(group, count, limit))

    def _stop_group(self, group: str, message: str) -> None:
        """Block the group and say why once: to the owner (it shows and logs it) or, without one, to the log."""
        self._blocked.add(group)
        if self.on_failure_limit is None:
            logger.error("%s", message)
            return
        try:
            self.on_failure_limit(group, message)
        except Exception:
            logger.exception("on_failure_limit callback failed for worker group %s: %s", group, message)

    def _limit_message(self, group: str, count: int, limit: int) -> str:
        window = self.settings.failures_validity_interval
        within = f" within {window:g} s (k8s-backend.executor.failures-validity-interval)" if window else ""
        last = [f.explanation for f in list(self._recent(group))[-LAST_EXPLANATIONS:]]
        return (
            f"Worker group {group!r} stopped replacing workers: {count} executor failures{within} reached "
            f"k8s-backend.executor.max-failures = {limit}. Fix the cause named below, then recreate the "
            f"cluster or the worker group (or raise max-failures). Last failures: " + " | ".join(last)
        )
