"""Pending pod -> verdict: can waiting make it run, or can it never start as it is?

Data flow: the allocator passes each Pending pod (and, when the backend may list nodes, every
node's allocatable resources) to :func:`unrecoverable_reason`; a non-None answer means waiting
cannot help, so the allocator fails the group after ``allocation.unrecoverable-pending-confirm``
instead of ``allocation.pending-timeout``. Everything else (a full cluster, a node still
starting, an image being pulled) keeps the timeout: a queue that drains is not a failure.

Unrecoverable, as a closed list:

* the image cannot be used: ``ErrImagePull``, ``ImagePullBackOff``, ``InvalidImageName``,
  ``ErrImageNeverPull`` on any container;
* a Secret or ConfigMap the pod needs is missing: ``CreateContainerConfigError``;
* the request is larger than any node could ever give: ``Unschedulable`` where every reason is
  ``Insufficient <resource>``, the pod asks more of that resource than every node's allocatable
  (so no deletion of other pods would help), and nothing mentions a cluster autoscaler. Without the
  nodes (no permission to list them) an Unschedulable pod is never judged unrecoverable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .exits import parse_memory_quantity

Pod = dict[str, Any]
Allocatable = Mapping[str, float]  # resource name -> amount (cpu in cores, memory in bytes)

UNUSABLE_IMAGE = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
MISSING_CONFIG = frozenset({"CreateContainerConfigError"})
_REASONS = re.compile(r"nodes are available:(.*?)(?:\.\s|\.?$)", re.S)  # up to the first sentence's end
_AUTOSCALER = ("autoscal", "scale-up", "scale up", "TriggeredScaleUp")


def unrecoverable_reason(pod: Pod, nodes: Sequence[Allocatable] | None) -> str | None:
    """Why this Pending pod can never start as it is, or None when waiting may help."""
    waiting = _unusable_container(pod)
    if waiting is not None:
        return waiting
    return _impossible_request(pod, nodes)


def _unusable_container(pod: Pod) -> str | None:
    status = pod.get("status") or {}
    for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in UNUSABLE_IMAGE:
            return f"the image cannot be pulled or used ({reason})"
        if reason in MISSING_CONFIG:
            return f"a Secret or ConfigMap the container needs is missing ({reason})"
    return None


def _impossible_request(pod: Pod, nodes: Sequence[Allocatable] | None) -> str | None:
    message = _unschedulable_message(pod)
    if message is None or nodes is None or not nodes or _mentions_autoscaler(pod, message):
        return None
    match = _REASONS.search(message)
    if match is None:
        return None
    reasons = [r.strip() for r in match.group(1).split(",") if r.strip()]
    insufficient = [re.sub(r"^\d+\s+", "", r) for r in reasons]
    if not insufficient or not all(r.startswith("Insufficient ") for r in insufficient):
        return None
    resources = {r.removeprefix("Insufficient ").strip() for r in insufficient}
    requests = pod_requests(pod)
    for node in nodes:
        if not any(requests.get(name, 0) > node.get(name, 0) for name in resources):
            return None  # this node could hold the pod once others leave: waiting may help
    asked = ", ".join(f"{name} {_show(name, requests.get(name, 0))}" for name in sorted(resources))
    largest = ", ".join(f"{name} {_show(name, max(n.get(name, 0) for n in nodes))}" for name in sorted(resources))
    return (f"the pod requests {asked}, more than any node can allocate (largest: {largest}), "
            "and no cluster autoscaler signalled a scale-up")


def _unschedulable_message(pod: Pod) -> str | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if (condition.get("type") == "PodScheduled" and condition.get("status") == "False"
                and condition.get("reason") == "Unschedulable"):
            return condition.get("message") or ""
    return None


def _mentions_autoscaler(pod: Pod, message: str) -> bool:
    annotations = ((pod.get("metadata") or {}).get("annotations") or {})
    texts = [message, *annotations.keys()]
    return any(word.lower() in text.lower() for text in texts for word in _AUTOSCALER)


def pod_requests(pod: Pod) -> dict[str, float]:
    """What the scheduler charges the pod: the sum over containers, or the largest init container if more."""
    spec = pod.get("spec") or {}
    total: dict[str, float] = {}
    for container in spec.get("containers") or []:
        for name, value in _requests(container).items():
            total[name] = total.get(name, 0) + value
    for container in spec.get("initContainers") or []:
        for name, value in _requests(container).items():
            total[name] = max(total.get(name, 0), value)
    return total


def _requests(container: dict[str, Any]) -> dict[str, float]:
    resources = container.get("resources") or {}
    merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}  # limits default requests
    return {name: quantity(name, str(value)) for name, value in merged.items()}


def node_allocatable(node: dict[str, Any]) -> dict[str, float]:
    """A Node's ``status.allocatable`` as numbers (cpu in cores, everything else in units)."""
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    return {name: quantity(name, str(value)) for name, value in allocatable.items()}


def quantity(name: str, text: str) -> float:
    """A Kubernetes quantity as a number: cpu in cores (``500m`` = 0.5), others in units."""
    text = text.strip()
    if name == "cpu" and text.endswith("m"):
        try:
            return float(text[:-1]) / 1000
        except ValueError:
            return 0.0
    value = parse_memory_quantity(text)
    if value is None:
        return 0.0
    return float(value) if name != "cpu" else _cpu(text)


def _cpu(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float(parse_memory_quantity(text) or 0)


def _show(name: str, value: float) -> str:
    if name == "cpu":
        return f"{value:g}"
    if name in ("memory", "ephemeral-storage") or name.startswith("hugepages-"):
        return f"{value / (1 << 30):.1f} GiB"
    return f"{value:g}"
