"""Adaptive scaling of a KubeSparkCluster's worker groups, as seen from the notebook.

By default ``cluster.adapt(...)`` runs beside the scheduler (``backend/autoscaling.py``, with a
scale-down stabilisation window): :class:`RemoteAdaptive` is only the handle it returns, and
:func:`adapt_options` checks the options before anything is asked of the scheduler.

A user's own ``Adaptive`` class still runs in this process, as with any distributed cluster:
``GroupView`` shows it one group of a KubeSparkCluster (its planned pods, existing pods and
registered workers) and ``GroupAdaptive`` (distributed's policy) asks the scheduler plugin for that
group's target and idle workers, so groups scale independently.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Protocol

from distributed.deploy.adaptive import Adaptive
from distributed.utils import in_async_call

from ..config import parse_duration
from .cluster_options import validate_worker_count
from .status_view import ClusterStatus

logger = logging.getLogger(__name__)


class AdaptingCluster(Protocol):
    """What adaptive scaling uses of a KubeSparkCluster, declared here so that adaptive needs no import of it."""

    loop: Any
    status: Any
    scheduler_comm: Any
    scheduler_info: Any
    asynchronous: bool
    _status_cache: ClusterStatus

    def sync(self, function: Any, *args: Any, **kwargs: Any) -> Any: ...

    def scale(self, n: int, group: str = ...) -> Any: ...

    def scale_down(self, workers: Any) -> Any: ...

    async def _refresh_status(self) -> ClusterStatus: ...

    async def _start_adapt(self, group: str, options: dict[str, Any]) -> None: ...

    async def _stop_adapt(self, group: str) -> None: ...


def _seconds(value: float | str | None, option: str) -> float | None:
    return None if value is None else parse_duration(value, f"adapt({option}=...)")


def adapt_options(*, minimum: int, maximum: int | float, scale_down_window: float | str | None,
                  interval: float | str | None, wait_count: int | None,
                  target_duration: float | str | None) -> dict[str, Any]:
    """adapt()'s options as the backend's ``k8s_adapt`` takes them (None: k8s-backend.adaptive.* decides)."""
    if wait_count is not None and (isinstance(wait_count, bool) or not isinstance(wait_count, int) or wait_count < 1):
        raise ValueError(f"adapt(wait_count={wait_count!r}): expected a whole number >= 1, such as 3")
    every = _seconds(interval, "interval")
    if every is not None and every <= 0:
        raise ValueError(f"adapt(interval={interval!r}): expected a duration > 0 such as '1s'")
    return {
        "minimum": minimum, "maximum": None if maximum == math.inf else int(maximum),
        "scale_down_window": _seconds(scale_down_window, "scale_down_window"), "interval": every,
        "wait_count": wait_count, "target_duration": _seconds(target_duration, "target_duration"),
    }


def check_adapt_bounds(minimum: int, maximum: int | float) -> None:
    """``adapt()``'s bounds, before anything is stopped or asked: whole numbers >= 0 (``maximum`` may be
    ``math.inf``), ``minimum <= maximum``."""
    validate_worker_count(minimum, "adapt(minimum=...)")
    if maximum != math.inf:
        validate_worker_count(maximum, "adapt(maximum=...)")
    if minimum > maximum:
        raise ValueError(f"adapt(minimum={minimum}, maximum={maximum}): minimum is larger than maximum; "
                         "use minimum <= maximum")


def start_adaptive(cluster: AdaptingCluster, group: str, Adaptive: Any, *, minimum: int, maximum: int | float,
                   scale_down_window: float | str | None, interval: float | str | None, wait_count: int | None,
                   target_duration: float | str | None, kwargs: dict[str, Any]) -> Any:
    """The adaptive scaling of one group that ``cluster.adapt()`` returns: the user's ``Adaptive`` class
    running in this process on a :class:`GroupView`, or (``Adaptive`` None) a :class:`RemoteAdaptive`
    whose loop is started beside the scheduler."""
    if Adaptive is not None:
        options = {k: v for k, v in dict(interval=interval, wait_count=wait_count,
                                         target_duration=target_duration).items() if v is not None}
        return Adaptive(cluster=GroupView(cluster, group), minimum=minimum, maximum=maximum, **options, **kwargs)
    if kwargs:
        raise TypeError(f"adapt() got unexpected keyword arguments {sorted(kwargs)}; it takes minimum, maximum, "
                        "group, scale_down_window, interval, wait_count and target_duration")
    adaptive = RemoteAdaptive(cluster, group, adapt_options(
        minimum=minimum, maximum=maximum, scale_down_window=scale_down_window, interval=interval,
        wait_count=wait_count, target_duration=target_duration))
    adaptive.start()
    return adaptive


class RemoteAdaptive:
    """What ``cluster.adapt()`` returns: the loop runs beside the scheduler; ``stop()`` ends it there."""

    def __init__(self, cluster: AdaptingCluster, group: str, options: dict[str, Any]) -> None:
        self.cluster = cluster
        self.group = group
        self.options = options
        self.minimum = options["minimum"]
        self.maximum = math.inf if options["maximum"] is None else options["maximum"]
        self.periodic_callback = None  # distributed's own loop is not used: the scheduler's backend runs it

    def __repr__(self) -> str:
        return f"<RemoteAdaptive group={self.group!r} minimum={self.minimum} maximum={self.maximum}>"

    def _call(self, coroutine_function: Any, *args: Any) -> Any:
        if self.cluster.asynchronous or in_async_call(self.cluster.loop):
            self.cluster.loop.add_callback(coroutine_function, *args)  # errors are logged by the loop
            return None
        return self.cluster.sync(coroutine_function, *args)

    def start(self) -> None:
        self._call(self.cluster._start_adapt, self.group, self.options)

    def stop(self, reason: str = "stopped") -> None:
        logger.info("adaptive scaling of worker group %s stopped: %s", self.group, reason)
        self._call(self.cluster._stop_adapt, self.group)


class GroupView:
    """The part of a KubeSparkCluster that Adaptive sees: one worker group."""

    def __init__(self, cluster: AdaptingCluster, group: str) -> None:
        self.cluster = cluster
        self.group = group

    @property
    def loop(self) -> Any:
        return self.cluster.loop

    @property
    def status(self) -> Any:
        return self.cluster.status

    @property
    def scheduler_comm(self) -> Any:
        return self.cluster.scheduler_comm

    def _executors(self) -> list[dict[str, Any]]:
        return self.cluster._status_cache.group_executors(self.group)

    @property
    def requested(self) -> set[str]:
        return {str(e["id"]) for e in self._executors() if e["phase"] in ("Pending", "Running")}

    @property
    def plan(self) -> set[str]:
        requested = self.requested
        target = self.cluster._status_cache.targets.get(self.group, 0)
        return requested | {f"planned-{self.group}-{i}" for i in range(max(0, target - len(requested)))}

    @property
    def observed(self) -> set[str]:
        ours = {str(e["id"]) for e in self._executors()}
        return {str(ws["name"]) for ws in self.cluster.scheduler_info.get("workers", {}).values()} & ours

    def scale(self, n: int) -> Any:
        return self.cluster.scale(n, group=self.group)

    def scale_down(self, workers: Any) -> Any:
        return self.cluster.scale_down([w for w in workers if not str(w).startswith("planned-")])

    def __await__(self):
        return self.cluster._refresh_status().__await__()


class GroupAdaptive(Adaptive):
    """Adaptive for one group: its target and its idle workers come from the scheduler plugin."""

    def __init__(self, cluster: GroupView, **kwargs: Any) -> None:
        self.group = cluster.group
        super().__init__(cluster=cluster, **kwargs)  # type: ignore[arg-type]

    async def target(self) -> int:
        return await self.scheduler.k8s_adaptive_target(group=self.group, target_duration=self.target_duration)

    async def workers_to_close(self, target: int) -> list[str]:
        return await self.scheduler.k8s_workers_to_close(group=self.group, target=target)

    async def scale_down(self, workers: Any) -> None:
        await super().scale_down([w for w in workers if not str(w).startswith("planned-")])
