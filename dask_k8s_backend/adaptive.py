"""Adaptive scaling per worker group, on top of distributed's ``Adaptive``.

distributed's policy (``AdaptiveCore.recommendations``: plan/requested/observed, ``wait_count``
before a worker is closed) is kept as it is; what changes is the view it gets. ``GroupView``
shows Adaptive one group of a KubeSparkCluster (its planned pods, existing pods and registered
workers) and ``GroupAdaptive`` asks the scheduler plugin for that group's target (demand for
the group's resources) and for its idle workers, so groups scale independently.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from distributed.deploy.adaptive import Adaptive

if TYPE_CHECKING:
    from .cluster import KubeSparkCluster


class GroupView:
    """The part of a KubeSparkCluster that Adaptive sees: one worker group."""

    def __init__(self, cluster: KubeSparkCluster, group: str) -> None:
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
