"""Pod -> PodState: the closed set of states an executor pod can be in.

The snapshot store keeps one ``PodState`` per executor id; the allocator and the lifecycle
manager match on these types and never test phase strings themselves. ``classify`` is the only
place that reads ``status.phase``, container states and ``metadata.deletionTimestamp``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Pod = dict[str, Any]


@dataclass(frozen=True)
class PodState:
    """Base of every pod state; ``pod`` is the pod as last seen (a dict in API JSON form)."""

    pod: Pod

    @property
    def name(self) -> str:
        return self.pod.get("metadata", {}).get("name", "")

    @property
    def is_final(self) -> bool:
        """Final states never change again: the lifecycle manager acts on them."""
        return False


@dataclass(frozen=True)
class PodPending(PodState):
    pass


@dataclass(frozen=True)
class PodRunning(PodState):
    pass


@dataclass(frozen=True)
class PodTerminating(PodState):
    """Deletion requested (deletionTimestamp set) but containers not yet stopped."""


@dataclass(frozen=True)
class PodUnknown(PodState):
    pass


@dataclass(frozen=True)
class PodSucceeded(PodState):
    @property
    def is_final(self) -> bool:
        return True


@dataclass(frozen=True)
class PodFailed(PodState):
    @property
    def is_final(self) -> bool:
        return True


@dataclass(frozen=True)
class PodDeleted(PodState):
    """The pod is gone from the API (DELETED event, or missing from snapshots too long)."""

    @property
    def is_final(self) -> bool:
        return True


def _terminated_containers(pod: Pod) -> list[dict[str, Any]]:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return [s for s in statuses if (s.get("state") or {}).get("terminated")]


def classify(pod: Pod, deleted: bool = False) -> PodState:
    """Classify a pod, looking at its phase, deletion mark and all of its containers.

    A pod whose phase is still Running but one of whose containers has terminated with a
    non-zero exit code is Failed for our purposes: with restartPolicy Never the worker is gone.
    """
    if deleted:
        return PodDeleted(pod)
    status = pod.get("status") or {}
    phase = status.get("phase")
    if phase == "Failed":
        return PodFailed(pod)
    if phase == "Succeeded":
        return PodSucceeded(pod)
    terminated = _terminated_containers(pod)
    if terminated and any((t["state"]["terminated"].get("exitCode") or 0) != 0 for t in terminated):
        return PodFailed(pod)
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return PodTerminating(pod)
    if phase == "Running":
        return PodRunning(pod)
    if phase in (None, "Pending"):
        return PodPending(pod)
    return PodUnknown(pod)
