"""Tasks no worker will ever run: fail them with the Kubernetes explanation instead of hanging.

Data flow::

    FailureTracker blocks a group ──> plugin.on_failure_limit ──> StrandedTasks.watch()
    every CHECK_INTERVAL s while a group is blocked:
        scheduler.queued / scheduler.unrunnable ──> stranded(tasks, ...) ──> scheduler.transition(key, "erred")

A task waiting for a worker (``queued`` or ``no-worker``) is stranded when every worker group that
could run it has stopped creating pods (``max-failures`` or a fast verdict) and no worker of those
groups is connected: nothing will ever pick it up, so its future would never resolve. It is failed
through the scheduler's own ``erred`` transition with a :class:`WorkerGroupStopped` that carries the
group's message (reason, exit code, the limit, what to change), exactly as a task that raised.

:func:`killed_worker_note` is the other half: when distributed fails a task with ``KilledWorker``,
the backend says what Kubernetes knows about the last worker's pod (its end, or a nanny restart for
memory with the pod's limit and the fix) beside it. The rules (:func:`stranded`) know nothing about
the scheduler; :class:`StrandedTasks` is the thin adapter.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..tasks import stop_quietly
from .groups import GroupRegistry

logger = logging.getLogger(__name__)

CHECK_INTERVAL = 1.0
WAITING_STATES = ("queued", "no-worker")


class WorkerGroupStopped(RuntimeError):
    """A task's worker groups stopped creating pods, so no worker will ever run it.

    Raised by the user's future (``future.result()``); the message carries the Kubernetes
    explanation and what to change.
    """


@dataclass(frozen=True)
class Stranded:
    key: Any
    message: str


def stranded(tasks: Iterable[Any], blocked: Mapping[str, str], groups: GroupRegistry,
             connected_groups: set[str]) -> list[Stranded]:
    """Waiting tasks whose every candidate group is blocked and has no connected worker."""
    found = []
    for ts in tasks:
        if ts.state not in WAITING_STATES:
            continue
        candidates = [g.name for g in groups.groups_for(getattr(ts, "resource_restrictions", None))]
        if not candidates or any(g not in blocked or g in connected_groups for g in candidates):
            continue
        why = " | ".join(blocked[g] for g in candidates)
        found.append(Stranded(ts.key, f"task {ts.key!r} cannot run: no worker will start for it. {why}"))
    return found


class StrandedTasks:
    """Fails stranded tasks on the scheduler while any group is blocked (see the module docstring)."""

    def __init__(self, *, scheduler: Any, groups: GroupRegistry, blocked: Callable[[], Mapping[str, str]],
                 connected_groups: Callable[[], set[str]], say: Callable[[str], None] = logger.error,
                 interval: float = CHECK_INTERVAL) -> None:
        self.scheduler = scheduler
        self.say = say
        self.groups = groups
        self.blocked = blocked
        self.connected_groups = connected_groups
        self.interval = interval
        self.failed: list[Any] = []
        self._task: asyncio.Task[None] | None = None

    def watch(self) -> None:
        """Start checking (idempotent); called when a group becomes blocked."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self.blocked():
            try:
                self.check()
            except Exception:
                logger.exception("failing the tasks stranded by a stopped worker group failed; retrying")
            await asyncio.sleep(self.interval)

    def check(self) -> list[Stranded]:
        """Fail every stranded task now; returns them."""
        scheduler = self.scheduler
        waiting = list(scheduler.queued) + list(scheduler.unrunnable)
        found = stranded(waiting, self.blocked(), self.groups, self.connected_groups())
        for item in found:
            ts = scheduler.tasks.get(item.key)
            if ts is None or ts.state not in WAITING_STATES:
                continue
            error = WorkerGroupStopped(item.message)
            stimulus = f"k8s-group-stopped-{time.time()}"
            recommendations = scheduler.transition(item.key, "erred", stimulus_id=stimulus, cause=item.key,
                                                   exception=pickle.dumps(error), exception_text=repr(error))
            scheduler.transitions(recommendations, stimulus)
            self.failed.append(item.key)
        if found:
            self.say(f"{len(found)} task(s) failed because no worker will start for them, e.g. {found[0].message}")
        return found

    async def stop(self) -> None:
        await stop_quietly(self._task)


def killed_worker_note(exception: Any, executor_of: Callable[[Any], int | None],
                       explanation_of: Callable[[int], str | None], pod_of: Callable[[int], str | None],
                       pod_running: Callable[[int], bool] = lambda executor_id: True) -> str | None:
    """What Kubernetes knows about the last worker of a task distributed failed with ``KilledWorker``."""
    if isinstance(exception, bytes):
        try:
            exception = pickle.loads(exception)
        except Exception:
            return None
    if type(exception).__name__ != "KilledWorker":
        return None
    last = exception.last_worker
    executor_id = executor_of(getattr(last, "name", None))
    if executor_id is None:
        return None
    pod = pod_of(executor_id) or "?"
    known = explanation_of(executor_id)
    if known:
        return f"task {exception.task!r} failed with KilledWorker; Kubernetes says: {known}"
    if not pod_running(executor_id):
        return (f"task {exception.task!r} failed with KilledWorker: its last worker was executor {executor_id} "
                f"(pod {pod}); see cluster.logs({executor_id}) and cluster.status_table for how its pod ended.")
    limit = getattr(last, "memory_limit", 0) or 0
    limit_text = f"{limit / (1 << 20):.0f} MiB" if limit else "its memory limit"
    return (f"task {exception.task!r} failed with KilledWorker: the worker of executor {executor_id} (pod {pod}) died "
            f"while its pod kept running, so Dask's nanny restarted it; most often that is the nanny's memory guard "
            f"(distributed.worker.memory.terminate, 95% of {limit_text}). Raise k8s-backend.worker.memory, or make "
            f"the task use less memory; see cluster.logs({executor_id}).")
