"""Worker groups: heterogeneous executors, like Spark's resource profiles and KubeRay's groups.

A group is a name plus the worker settings its pods are built from (cores, memory, Dask
resources, node selector, tolerations, template, env). The allocator keeps one target per
group and the failure tracker counts failures per group; this module holds the registry the
scheduler plugin consults, and the demand rules adaptive scaling uses per group:

- a group whose workers advertise Dask resources is sized by the tasks that need those
  resources (processing, queued or unrunnable), ``slots`` tasks per worker;
- the default group follows the scheduler's own ``adaptive_target`` for the tasks no
  resource-advertising group can run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any, Iterable

from dask_k8s_backend import labels
from dask_k8s_backend.config import Settings, load_settings

GROUP_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def validate_group_name(name: Any) -> str:
    if not isinstance(name, str) or not GROUP_NAME.match(name):
        raise ValueError(
            f"worker group name {name!r} is invalid: use lowercase letters, digits and '-', starting and "
            "ending with a letter or digit, at most 63 characters (it becomes a label value), e.g. 'gpu'"
        )
    return name


@dataclass(frozen=True)
class WorkerGroup:
    """One group's pod recipe."""

    name: str
    settings: Settings
    template: dict | None = None

    @property
    def resources(self) -> dict[str, float]:
        return dict(self.settings.worker.resources)

    def can_run(self, restrictions: dict[str, float] | None) -> bool:
        """Whether one worker of this group satisfies a task's resource restrictions."""
        if not restrictions:
            return True
        return all(self.resources.get(name, 0) >= amount for name, amount in restrictions.items())

    def slots(self, restrictions: dict[str, float] | None) -> int:
        """How many such tasks one worker runs at once."""
        if not restrictions:
            return max(1, math.floor(self.settings.worker.cores))
        return max(1, min(math.floor(self.resources[name] / amount) for name, amount in restrictions.items() if amount > 0))


def group_settings(base: Settings, worker_overrides: dict[str, Any], image: str | None = None) -> Settings:
    """The app's settings with the group's ``worker.*`` overrides and its own image, if it has one
    (validated like any config)."""
    overrides = {f"worker.{k}": v for k, v in worker_overrides.items()}
    if image is not None:
        overrides["image"] = image
    parsed = load_settings(overrides, warn_unknown=False)  # the app's own keys were warned about when it loaded
    return replace(base, worker=parsed.worker, image=base.image if image is None else parsed.image)


class GroupRegistry:
    """The groups of one app; the default group always exists."""

    def __init__(self, default: WorkerGroup) -> None:
        self._groups: dict[str, WorkerGroup] = {default.name: default}

    def __contains__(self, name: str) -> bool:
        return name in self._groups

    def __getitem__(self, name: str) -> WorkerGroup:
        try:
            return self._groups[name]
        except KeyError:
            raise KeyError(
                f"worker group {name!r} does not exist; existing groups: {sorted(self._groups)}; "
                "add it with cluster.add_worker_group(name, ...)"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._groups)

    def add(self, group: WorkerGroup) -> None:
        if group.name in self._groups:
            raise ValueError(f"worker group {group.name!r} already exists; remove it first or pick another name")
        self._groups[group.name] = group

    def remove(self, name: str) -> WorkerGroup:
        if name == labels.DEFAULT_GROUP:
            raise ValueError("the default worker group cannot be removed; scale it to 0 instead")
        return self._groups.pop(self[name].name)

    def groups_for(self, restrictions: dict[str, float] | None) -> list[WorkerGroup]:
        """Groups whose workers can run a task with these restrictions."""
        return [g for g in self._groups.values() if g.can_run(restrictions)]


def demand_by_group(registry: GroupRegistry, tasks: Iterable[Any]) -> dict[str, int]:
    """Workers each resource-advertising group needs for the tasks waiting or running on it.

    A task with resource restrictions counts for the first group (by name) that can run it.
    """
    slots_needed: dict[str, float] = {}
    for ts in tasks:
        restrictions = getattr(ts, "resource_restrictions", None)
        if not restrictions:
            continue
        candidates = registry.groups_for(restrictions)
        if not candidates:
            continue
        group = sorted(candidates, key=lambda g: g.name)[0]
        slots_needed[group.name] = slots_needed.get(group.name, 0.0) + 1.0 / group.slots(restrictions)
    return {name: math.ceil(need) for name, need in slots_needed.items()}
