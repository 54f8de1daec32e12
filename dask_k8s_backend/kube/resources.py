"""Resource quantities for the embedded scheduler: what a pod requests and what a node has left.

Data flow: the scheduler reads a pod's containers (``resources.requests``/``limits``) and a node's
``status.allocatable`` once, turns them into integer :class:`Resources` maps here (cpu in
millicores, memory and every other resource in whole units, rounded up as Kubernetes does), and
compares sums. Nothing here touches the store; every function is pure.

The effective request of a pod follows the kube-scheduler: the sum over its containers, but at
least the largest init container (they run one at a time), plus ``spec.overhead``; a container
that sets a limit but no request requests its limit (the API server defaults it so).
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any, Mapping

Resources = dict[str, int]

_QUANTITY = re.compile(r"^([+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|)$")
_SUFFIX = {
    "": Decimal(1), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
    "P": Decimal("1e15"), "E": Decimal("1e18"),
    "Ki": Decimal(1 << 10), "Mi": Decimal(1 << 20), "Gi": Decimal(1 << 30), "Ti": Decimal(1 << 40),
    "Pi": Decimal(1 << 50), "Ei": Decimal(1 << 60),
}
CPU = "cpu"
MEMORY = "memory"
PODS = "pods"


def parse_quantity(value: Any, *, what: str = "quantity") -> Decimal:
    """A Kubernetes quantity (``500m``, ``2Gi``, ``1e3``, ``4``) as an exact Decimal.

    ``what`` names the field in the error, e.g. ``containers[0].resources.requests.cpu``.
    """
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a Kubernetes quantity such as '500m' or '2Gi', got {value!r}.")
    if isinstance(value, (int, float)):
        return Decimal(str(value))
    match = _QUANTITY.match(str(value).strip())
    if not match:
        raise ValueError(
            f"{what}: {value!r} is not a Kubernetes quantity; use a number with an optional suffix "
            "(m, k, M, G, Ki, Mi, Gi, ...), e.g. '500m' or '2Gi'."
        )
    try:
        return Decimal(match.group(1)) * _SUFFIX[match.group(2)]
    except InvalidOperation as e:
        raise ValueError(f"{what}: {value!r} is not a Kubernetes quantity.") from e


def to_units(resource: str, value: Any, *, what: str | None = None) -> int:
    """Integer units the scheduler compares: millicores for cpu, whole units (bytes, pods, gpus) else.

    Rounded up like the kube-scheduler's ``MilliValue``/``Value``.
    """
    quantity = parse_quantity(value, what=what or resource)
    scaled = quantity * 1000 if resource == CPU else quantity
    return int(math.ceil(scaled))


def resource_map(mapping: Mapping[str, Any] | None, *, what: str = "resources") -> Resources:
    """``{"cpu": "500m", "memory": "1Gi"}`` -> ``{"cpu": 500, "memory": 1073741824}``."""
    return {name: to_units(name, value, what=f"{what}.{name}") for name, value in (mapping or {}).items()}


def add(a: Mapping[str, int], b: Mapping[str, int]) -> Resources:
    out = dict(a)
    for name, value in b.items():
        out[name] = out.get(name, 0) + value
    return out


def subtract(a: Mapping[str, int], b: Mapping[str, int]) -> Resources:
    out = dict(a)
    for name, value in b.items():
        out[name] = out.get(name, 0) - value
    return out


def elementwise_max(a: Mapping[str, int], b: Mapping[str, int]) -> Resources:
    out = dict(a)
    for name, value in b.items():
        out[name] = max(out.get(name, 0), value)
    return out


def container_requests(container: Mapping[str, Any]) -> Resources:
    """A container's requests, a limit standing in for a missing request (API server defaulting)."""
    resources = container.get("resources") or {}
    name = container.get("name", "?")
    limits = resource_map(resources.get("limits"), what=f"container {name!r} limits")
    requests = resource_map(resources.get("requests"), what=f"container {name!r} requests")
    return {**limits, **requests}


def pod_requests(pod: Mapping[str, Any]) -> Resources:
    """The pod's effective request: sum of containers, at least each init container, plus overhead.

    Always has a ``pods`` entry of 1, so "Too many pods" is checked like any other resource.
    """
    spec = pod.get("spec") or {}
    total: Resources = {}
    for container in spec.get("containers") or []:
        total = add(total, container_requests(container))
    for container in spec.get("initContainers") or []:
        total = elementwise_max(total, container_requests(container))
    total = add(total, resource_map(spec.get("overhead"), what="spec.overhead"))
    total[PODS] = 1
    return {name: value for name, value in total.items() if value or name == PODS}


def container_memory_limit(container: Mapping[str, Any]) -> int | None:
    """Bytes of ``resources.limits.memory``, or None when the container has no memory limit."""
    limit = ((container.get("resources") or {}).get("limits") or {}).get(MEMORY)
    return None if limit is None else to_units(MEMORY, limit, what=f"container {container.get('name', '?')!r} limits.memory")


def insufficient(request: Mapping[str, int], free: Mapping[str, int]) -> list[str]:
    """Names of the resources ``request`` needs more of than ``free`` holds, in the scheduler's order.

    cpu, memory, then the rest sorted; a resource the node does not have at all counts as 0 free.
    """
    short = [name for name, value in request.items() if value > 0 and value > free.get(name, 0)]
    order = {PODS: 0, CPU: 1, MEMORY: 2}
    return sorted(short, key=lambda name: (order.get(name, 3), name))


QOS_RESOURCES = (CPU, MEMORY)


def _qos_quantities(mapping: Mapping[str, Any] | None) -> dict[str, Decimal]:
    """The positive cpu/memory quantities of a requests/limits map; zero and other resources do not count."""
    out: dict[str, Decimal] = {}
    for name, value in (mapping or {}).items():
        if name in QOS_RESOURCES:
            quantity = parse_quantity(value, what=name)
            if quantity > 0:
                out[name] = quantity
    return out


def _add_into(total: dict[str, Decimal], more: Mapping[str, Decimal]) -> None:
    for name, value in more.items():
        total[name] = total.get(name, Decimal(0)) + value


def _container_qos_requests(container: Mapping[str, Any]) -> dict[str, Decimal]:
    resources = (container or {}).get("resources") or {}
    return _qos_quantities({**(resources.get("limits") or {}), **(resources.get("requests") or {})})


def _pod_level_requests(spec: Mapping[str, Any]) -> dict[str, Decimal]:
    """Pod-level cpu/memory requests as upstream defaults them (defaults.go defaultPodRequests).

    Explicit, else what the containers request together (summed, at least each init container),
    else the pod-level limit; nothing is defaulted without pod-level limits.
    """
    resources = spec["resources"]
    if not resources.get("limits"):
        return _qos_quantities_all(resources.get("requests"))
    aggregated: dict[str, Decimal] = {}
    for container in spec.get("containers") or []:
        _add_into(aggregated, _container_qos_requests(container))
    for container in spec.get("initContainers") or []:
        for name, value in _container_qos_requests(container).items():
            aggregated[name] = max(aggregated.get(name, Decimal(0)), value)
    defaults = {**_qos_quantities(resources.get("limits")), **aggregated}
    return {**defaults, **_qos_quantities_all(resources.get("requests"))}


def _qos_quantities_all(mapping: Mapping[str, Any] | None) -> dict[str, Decimal]:
    """Like :func:`_qos_quantities` but keeping zeros, so an explicit zero request overrides a default."""
    return {name: parse_quantity(value, what=name) for name, value in (mapping or {}).items() if name in QOS_RESOURCES}


def _qos_totals(pod: Mapping[str, Any]) -> tuple[dict[str, Decimal], dict[str, Decimal], bool]:
    """Summed cpu/memory requests and limits, and whether every level sets both cpu and memory limits.

    A limit stands in for a missing request (the API server's defaulting), so a pod reads the same
    before and after it is stored. Pod-level ``spec.resources``, when given, replaces the containers.
    """
    spec = pod.get("spec") or {}
    if isinstance(spec.get("resources"), dict):
        limits = _qos_quantities(spec["resources"].get("limits"))
        requests = {k: v for k, v in _pod_level_requests(spec).items() if v > 0}
        return requests, limits, set(limits) >= set(QOS_RESOURCES)
    requests: dict[str, Decimal] = {}
    limits: dict[str, Decimal] = {}
    all_limited = True
    for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        container_limits = _qos_quantities(((container or {}).get("resources") or {}).get("limits"))
        _add_into(requests, _container_qos_requests(container))
        _add_into(limits, container_limits)
        all_limited = all_limited and set(container_limits) >= set(QOS_RESOURCES)
    return requests, limits, all_limited


def qos_class(pod: Mapping[str, Any]) -> str:
    """Guaranteed / Burstable / BestEffort, as kube-apiserver computes ``status.qosClass`` at creation.

    Upstream's ``ComputePodQOS`` (kubernetes pkg/apis/core/helper/qos/qos.go): only positive cpu and
    memory quantities count; BestEffort when there are none; Guaranteed when every container (init
    containers included) limits both cpu and memory and the summed requests equal the summed limits;
    Burstable otherwise.
    """
    requests, limits, all_limited = _qos_totals(pod)
    if not requests and not limits:
        return "BestEffort"
    if all_limited and requests == limits:
        return "Guaranteed"
    return "Burstable"


def pod_qos_class(pod: Mapping[str, Any]) -> str:
    """The pod's recorded ``status.qosClass``, computed only when it has none (upstream's ``GetPodQOS``)."""
    return str(((pod.get("status") or {}).get("qosClass")) or qos_class(pod))
