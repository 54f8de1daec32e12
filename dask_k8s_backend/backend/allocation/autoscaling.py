"""Adaptive scaling beside the scheduler: one loop per worker group, in the scheduler's process.

Data flow (dask-gateway's layout: the policy lives where the scheduler lives)::

    every interval ─> GroupAutoscaler.adapt()   (distributed's AdaptiveCore: plan/requested/observed,
                         │                        wait_count before a worker is retired)
                         ├─ target():  the backend's demand for the group (adaptive_target)
                         ├─ safe_target(): within minimum/maximum, then ScaleDownStabilizer (window)
                         ├─ scale_up(n):   backend.request_total_executors(n, group)
                         └─ scale_down(w): backend.kill_executors(w)  (retire, then delete the pods)

Because it runs in the scheduler, a cluster-mode cluster keeps scaling while no client is connected.
:class:`Autoscalers` owns the loops of one backend: started and stopped by the ``k8s_adapt`` and
``k8s_adapt_stop`` handlers, described in ``k8s_status``, all stopped at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from distributed.deploy.adaptive_core import AdaptiveCore

from ...clock import Clock
from ...config import Settings
from ..components import BackendComponents
from .groups import GroupRegistry
from .stabilization import ScaleDownStabilizer

logger = logging.getLogger(__name__)


class ScalableBackend(Protocol):
    """What the group autoscalers read of and ask of the scheduler plugin, declared here so that only the plugin
    imports the other."""

    settings: Settings
    groups: GroupRegistry
    components: BackendComponents | None

    def record(self, message: str, level: int = ...) -> None: ...

    def registered_executor_ids(self) -> set[int]: ...

    def adaptive_target(self, group: str = ..., target_duration: float | None = None) -> int: ...

    def workers_to_close(self, group: str = ..., target: int = 0) -> list[str]: ...

    async def request_total_executors(self, n: int, group: str = ...) -> None: ...

    async def kill_executors(self, workers: list[str]) -> None: ...


@dataclass(frozen=True)
class GroupHooks:
    """What a group's autoscaler reads from and asks of the backend (injected, so rules run on fakes)."""

    requested: Callable[[], set[str]]  # executors of the group that exist (Pending or Running)
    target: Callable[[], int]  # the allocator's current target for the group
    observed: Callable[[], set[str]]  # executors whose workers registered
    demand: Callable[[], int]  # workers the load asks for
    idle_workers: Callable[[int], list[str]]  # workers to retire to come down to a target
    scale_to: Callable[[int], Awaitable[None]]
    retire: Callable[[list[str]], Awaitable[None]]


@dataclass(frozen=True)
class AdaptOptions:
    minimum: int = 0
    maximum: int | float = math.inf
    scale_down_window: float = 30.0
    interval: float = 1.0
    wait_count: int = 3
    target_duration: float | None = None

    def describe(self) -> str:
        maximum = "∞" if self.maximum == math.inf else str(self.maximum)
        return f"adaptive {self.minimum}–{maximum}, scale-down window {self.scale_down_window:g} s"


class GroupAutoscaler(AdaptiveCore):
    """distributed's adaptive policy for one group, with a scale-down stabilisation window."""

    def __init__(self, group: str, hooks: GroupHooks, options: AdaptOptions, clock: Clock) -> None:
        super().__init__(minimum=options.minimum, maximum=options.maximum, wait_count=options.wait_count)
        self.group = group
        self.hooks = hooks
        self.options = options
        self.clock = clock
        self.stabilizer = ScaleDownStabilizer(options.scale_down_window)
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ AdaptiveCore's contract
    @property
    def requested(self) -> set[str]:
        return self.hooks.requested()

    @property
    def plan(self) -> set[str]:
        requested = self.requested
        missing = max(0, self.hooks.target() - len(requested))
        return requested | {f"planned-{self.group}-{i}" for i in range(missing)}

    @property
    def observed(self) -> set[str]:
        return self.hooks.observed()

    async def target(self) -> int:
        return self.hooks.demand()

    async def safe_target(self) -> int:
        """Within minimum/maximum, then never below the window's highest recommendation."""
        return self.stabilizer.recommend(await super().safe_target(), self.clock.now())

    async def workers_to_close(self, target: int) -> list[str]:
        return self.hooks.idle_workers(target)

    async def scale_up(self, n: int) -> None:
        await self.hooks.scale_to(n)

    async def scale_down(self, workers: list[str]) -> None:
        await self.hooks.retire([str(w) for w in workers])

    # ------------------------------------------------------------------ loop
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"k8s-adapt-{self.group}")

    async def _run(self) -> None:
        while True:
            try:
                await self.adapt()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("adaptive scaling of worker group %s failed; trying again in %s s", self.group,
                               self.options.interval, exc_info=True)
            await self.clock.sleep(self.options.interval)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def hooks_for(backend: ScalableBackend, group: str, target_duration: float | None) -> GroupHooks:
    """A group's view of the backend: its allocator for pods and targets, its scheduler for workers."""
    allocator = backend.components.allocator  # type: ignore[union-attr]

    def requested() -> set[str]:
        return {str(i) for i in allocator.alive_ids(group)}

    def observed() -> set[str]:
        return {str(i) for i in backend.registered_executor_ids() if allocator.group_of(i) == group}

    return GroupHooks(
        requested=requested,
        target=lambda: allocator.targets().get(group, 0),
        observed=observed,
        demand=lambda: backend.adaptive_target(group=group, target_duration=target_duration),
        idle_workers=lambda target: backend.workers_to_close(group=group, target=target),
        scale_to=lambda n: backend.request_total_executors(n, group),
        retire=backend.kill_executors,
    )


class Autoscalers:
    """The autoscaling loops of one backend, one per group at most."""

    def __init__(self, backend: ScalableBackend) -> None:
        self.backend = backend
        self._scalers: dict[str, GroupAutoscaler] = {}

    async def adapt(self, group: str, minimum: int = 0, maximum: float | None = None,
                    scale_down_window: float | None = None, interval: float | None = None,
                    wait_count: int | None = None, target_duration: float | None = None) -> str:
        """Start (or replace) the group's loop; unset options come from k8s-backend.adaptive.*."""
        self.backend.groups[group]  # an unknown group raises a KeyError naming the existing ones
        defaults = self.backend.settings.adaptive
        options = AdaptOptions(
            minimum=minimum, maximum=math.inf if maximum is None else int(maximum),
            scale_down_window=defaults.scale_down_window if scale_down_window is None else scale_down_window,
            interval=defaults.interval if interval is None else interval,
            wait_count=defaults.wait_count if wait_count is None else wait_count,
            target_duration=target_duration,
        )
        await self.stop(group)
        clock = self.backend.components.clock  # type: ignore[union-attr]
        scaler = GroupAutoscaler(group, hooks_for(self.backend, group, target_duration), options, clock)
        self._scalers[group] = scaler
        scaler.start()
        self.backend.record(f"worker group {group!r}: {options.describe()}")
        return options.describe()

    async def stop(self, group: str) -> None:
        scaler = self._scalers.pop(group, None)
        if scaler is not None:
            await scaler.stop()

    async def stop_all(self) -> None:
        for group in list(self._scalers):
            await self.stop(group)

    def describe(self) -> dict[str, str]:
        return {group: scaler.options.describe() for group, scaler in self._scalers.items()}

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {"k8s_adapt": self.adapt, "k8s_adapt_stop": self.stop}
