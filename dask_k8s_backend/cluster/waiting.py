"""Waiting for workers without ever hanging silently.

``wait_for_workers`` checks, on each tick, the workers registered with the scheduler and the
backend's view of the pods; it fails fast when the backend has given up (too many failures)
and, on timeout, raises one error that says why the pods are not running (Unschedulable with
the scheduler's message, image pull errors, ...), instead of a bare timeout.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from distributed.core import Status
from distributed.objects import SchedulerInfo

from .status_view import ClusterStatus

POLL_INTERVAL = 0.1


class WaitingCluster(Protocol):
    """What :func:`wait_for_workers` uses of a KubeSparkCluster, declared here so that waiting needs no import of it."""

    scheduler_info: SchedulerInfo
    scheduler_comm: Any

    async def _refresh_status(self) -> ClusterStatus: ...


class WorkersNotReadyError(TimeoutError):
    """Raised when the requested workers are not running in time, with the reasons."""


class ExecutorFailuresError(RuntimeError):
    """Raised when the backend stopped replacing executors after too many failures."""


def _running_workers(info: dict[str, Any]) -> int:
    return sum(1 for ws in info["workers"].values() if ws["status"] == Status.running.name)


def _pending_summary(reasons: dict[str, str]) -> str:
    if not reasons:
        return "no pod reported a reason for being pending"
    distinct = sorted(set(reasons.values()))
    return "; ".join(f"{reason} (executors {', '.join(sorted(k for k, v in reasons.items() if v == reason))})" for reason in distinct)


async def wait_for_workers(cluster: WaitingCluster, n_workers: int, timeout: float | None) -> None:
    """Wait until ``n_workers`` workers are running; raise a clear error instead of hanging."""
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"wait_for_workers(n_workers): expected a positive whole number, got {n_workers!r}")
    deadline = None if timeout is None else time.monotonic() + float(timeout)
    while True:
        cluster.scheduler_info = SchedulerInfo(await cluster.scheduler_comm.identity())
        running = _running_workers(cluster.scheduler_info)
        if running >= n_workers:
            return
        status = await cluster._refresh_status()
        if status.errors and status.group_blocked_all():
            raise ExecutorFailuresError(
                f"{running} of {n_workers} workers are running and the cluster stopped creating pods: {status.error}"
            )
        if deadline is not None and time.monotonic() > deadline:
            raise WorkersNotReadyError(
                f"only {running} of {n_workers} workers were running after {timeout} s "
                f"(target {status.target}, pods: {dict(status.phase_counts()) or 'none'}); "
                f"pending: {_pending_summary(status.pending_reasons)}"
            )
        await asyncio.sleep(POLL_INTERVAL)
