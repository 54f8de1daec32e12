"""ResourceQuota and LimitRange rules, as kube-apiserver's admission plugins apply them to pods.

Pure functions on plain dicts, shared by two callers so both sides agree on the numbers:

* the embedded API server's admission (``embedded/admission.py``) applies LimitRange defaults,
  refuses min/max violations and pods that would exceed a ResourceQuota (403, with the real
  message shape ``exceeded quota: q, requested: ..., used: ..., limited: ...``);
* the client-side preflight (``preflight.py``) asks, before any pod exists, how many worker pods
  the namespace's quotas leave room for.

Data flow: LimitRanges -> :func:`apply_limit_ranges` (defaults) -> :func:`pod_usage` (what the pod
counts against each quota key) -> compared with ``hard`` minus :func:`namespace_usage` of the other
non-terminal pods -> :func:`exceeded_keys` / :func:`quota_room`. Quantities are exact Decimals
(cpu in cores, memory in bytes); :func:`format_quantity` prints them the way Kubernetes does.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .resources import parse_quantity, qos_class

Usage = dict[str, Decimal]

TERMINAL_PHASES = ("Succeeded", "Failed")
# Quota keys that count pod requests under another name (kube: "cpu" is "requests.cpu").
_REQUEST_ALIASES = {"cpu": "cpu", "memory": "memory", "ephemeral-storage": "ephemeral-storage"}
_BINARY = (("Ei", 1 << 60), ("Pi", 1 << 50), ("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10))


# ------------------------------------------------------------------------------------ quantities
def format_quantity(key: str, value: Decimal) -> str:
    """``Decimal`` -> a Kubernetes quantity string: cpu in cores or millicores, memory in Gi/Mi/Ki."""
    if value == value.to_integral_value():
        whole = int(value)
        if "memory" in key or "storage" in key:
            for suffix, size in _BINARY:
                if whole and whole % size == 0:
                    return f"{whole // size}{suffix}"
        return str(whole)
    milli = value * 1000
    if milli == milli.to_integral_value():
        return f"{int(milli)}m"
    return f"{int(math.ceil(milli))}m"


def format_usage(usage: Mapping[str, Decimal], keys: Iterable[str]) -> str:
    """``requests.cpu=2,requests.memory=1Gi`` for ``keys`` (sorted, as kube-apiserver prints them)."""
    return ",".join(f"{k}={format_quantity(k, usage.get(k, Decimal(0)))}" for k in sorted(keys))


def parse_hard(hard: Mapping[str, Any] | None, *, what: str = "spec.hard") -> Usage:
    return {key: parse_quantity(value, what=f"{what}.{key}") for key, value in (hard or {}).items()}


# ------------------------------------------------------------------------------------ LimitRange
LIMIT_RANGER_ANNOTATION = "kubernetes.io/limit-ranger"


def limit_range_item_defaults(item: Mapping[str, Any]) -> dict[str, Any]:
    """A LimitRange item as the API stores it (SetDefaults_LimitRangeItem, Container items only): a missing
    default limit is the max, a missing default request is the default limit, else the min."""
    if item.get("type") != "Container":
        return dict(item)
    default = {**(item.get("max") or {}), **(item.get("default") or {})}
    default_request = {**(item.get("min") or {}), **default, **(item.get("defaultRequest") or {})}
    return {**item, "default": default, "defaultRequest": default_request}


def container_defaults(limit_ranges: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(default limits, default requests) for containers, from items defaulted as the API stores them."""
    limits: dict[str, Any] = {}
    requests: dict[str, Any] = {}
    for item in map(limit_range_item_defaults, _container_items(limit_ranges)):
        for key, value in item["default"].items():
            limits.setdefault(key, value)
        for key, value in item["defaultRequest"].items():
            requests.setdefault(key, value)
    return limits, requests


def _container_items(limit_ranges: Iterable[Mapping[str, Any]]) -> Iterable[Mapping[str, Any]]:
    return _items(limit_ranges, "Container")


def apply_limit_ranges(pod: Mapping[str, Any], limit_ranges: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A copy of ``pod`` whose containers got the LimitRanges' default limits and requests.

    As the API server does, a container's own limit stands in for its missing request first, so a
    LimitRange default request only fills what the container leaves entirely unset. What was set is
    said in the ``kubernetes.io/limit-ranger`` annotation, in upstream's words.
    """
    default_limits, default_requests = container_defaults(list(limit_ranges))
    out = copy.deepcopy(dict(pod))
    spec = out.setdefault("spec", {})
    said: list[str] = []
    for field, label in (("containers", "container"), ("initContainers", "init container")):
        for container in spec.get(field) or []:
            said += _default_container(container, default_limits, default_requests, label)
    if said:
        annotations = out.setdefault("metadata", {}).setdefault("annotations", {})
        annotations[LIMIT_RANGER_ANNOTATION] = "LimitRanger plugin set: " + "; ".join(said)
    return out


def _default_container(container: dict[str, Any], default_limits: Mapping[str, Any],
                       default_requests: Mapping[str, Any], label: str) -> list[str]:
    """Fill one container's unset limits and requests in place; what was set, as upstream's annotation says it."""
    resources = container.get("resources") or {}
    container["resources"] = resources
    limits = dict(resources.get("limits") or {})
    requests = {**limits, **(resources.get("requests") or {})}
    set_limits = sorted(k for k in default_limits if k not in limits)
    set_requests = sorted(k for k in default_requests if k not in requests)
    limits.update({k: default_limits[k] for k in set_limits})
    requests.update({k: default_requests[k] for k in set_requests})
    if limits:
        resources["limits"] = limits
    if requests:
        resources["requests"] = requests
    name = container.get("name", "")
    said = [f"{', '.join(set_requests)} request for {label} {name}"] if set_requests else []
    return said + ([f"{', '.join(set_limits)} limit for {label} {name}"] if set_limits else [])


def limit_range_violations(pod: Mapping[str, Any], limit_ranges: Iterable[Mapping[str, Any]]) -> list[str]:
    """Container and Pod min/max/maxLimitRequestRatio violations, in kube-apiserver's words."""
    limit_ranges = list(limit_ranges)
    problems: list[str] = []
    spec = pod.get("spec") or {}
    containers = list(spec.get("containers") or []) + list(spec.get("initContainers") or [])
    for item in _container_items(limit_ranges):
        for container in containers:
            resources = container.get("resources") or {}
            limits = resources.get("limits") or {}
            problems += _violations("Container", {**limits, **(resources.get("requests") or {})}, limits, item)
    for item in _items(limit_ranges, "Pod"):
        requests, limits = _pod_totals(pod)
        problems += _violations("Pod", {k: format_quantity(k, v) for k, v in requests.items()},
                                {k: format_quantity(k, v) for k, v in limits.items()}, item)
    return problems


def _items(limit_ranges: Iterable[Mapping[str, Any]], kind: str) -> Iterable[Mapping[str, Any]]:
    for limit_range in limit_ranges:
        for item in (limit_range.get("spec") or {}).get("limits") or []:
            if item.get("type") == kind:
                yield item


def _violations(kind: str, requests: Mapping[str, Any], limits: Mapping[str, Any], item: Mapping[str, Any]) -> list[str]:
    """At most one problem per constraint and resource, the first upstream's limitranger checks
    (minConstraint: request, then limit; maxConstraint: limit, then request)."""
    problems = []
    for key, minimum in (item.get("min") or {}).items():
        low = parse_quantity(minimum)
        if key not in requests:
            problems.append(f"minimum {key} usage per {kind} is {minimum}.  No request is specified")
        elif parse_quantity(requests[key]) < low:
            problems.append(f"minimum {key} usage per {kind} is {minimum}, but request is {requests[key]}")
        elif key in limits and parse_quantity(limits[key]) < low:
            problems.append(f"minimum {key} usage per {kind} is {minimum}, but limit is {limits[key]}")
    for key, maximum in (item.get("max") or {}).items():
        high = parse_quantity(maximum)
        if key not in limits:
            problems.append(f"maximum {key} usage per {kind} is {maximum}.  No limit is specified")
        elif parse_quantity(limits[key]) > high:
            problems.append(f"maximum {key} usage per {kind} is {maximum}, but limit is {limits[key]}")
        elif key in requests and parse_quantity(requests[key]) > high:
            problems.append(f"maximum {key} usage per {kind} is {maximum}, but request is {requests[key]}")
    for key, ratio in (item.get("maxLimitRequestRatio") or {}).items():
        request = parse_quantity(requests[key]) if key in requests else Decimal(0)
        limit = parse_quantity(limits[key]) if key in limits else Decimal(0)
        if request == 0:  # a ratio needs both: upstream refuses a container without either
            problems.append(f"{key} max limit to request ratio per {kind} is {ratio}, but no request is specified or "
                            "request is 0")
        elif limit == 0:
            problems.append(f"{key} max limit to request ratio per {kind} is {ratio}, but no limit is specified or "
                            "limit is 0")
        elif limit / request > parse_quantity(ratio):
            problems.append(f"{key} max limit to request ratio per {kind} is {ratio}, but provided ratio is "
                            f"{float(limit / request):f}")
    return problems


def aggregate(problems: list[str]) -> str:
    """One message for several problems as utilerrors.Aggregate prints it: each distinct message once (two
    containers breaking the same limit are one problem), bracketed when more than one remains."""
    distinct = list(dict.fromkeys(problems))
    return distinct[0] if len(distinct) == 1 else "[" + ", ".join(distinct) + "]"


# ------------------------------------------------------------------------------------ ResourceQuota
def _container_resources(container: Mapping[str, Any]) -> tuple[Usage, Usage]:
    resources = container.get("resources") or {}
    limits = {k: parse_quantity(v) for k, v in (resources.get("limits") or {}).items()}
    requests = {**limits, **{k: parse_quantity(v) for k, v in (resources.get("requests") or {}).items()}}
    return requests, limits


def _pod_totals(pod: Mapping[str, Any]) -> tuple[Usage, Usage]:
    """Sum over containers, at least the largest init container (they run one at a time)."""
    spec = pod.get("spec") or {}
    requests: Usage = {}
    limits: Usage = {}
    for container in spec.get("containers") or []:
        r, lim = _container_resources(container)
        for key, value in r.items():
            requests[key] = requests.get(key, Decimal(0)) + value
        for key, value in lim.items():
            limits[key] = limits.get(key, Decimal(0)) + value
    for container in spec.get("initContainers") or []:
        r, lim = _container_resources(container)
        for key, value in r.items():
            requests[key] = max(requests.get(key, Decimal(0)), value)
        for key, value in lim.items():
            limits[key] = max(limits.get(key, Decimal(0)), value)
    return requests, limits


def pod_usage(pod: Mapping[str, Any], keys: Iterable[str]) -> Usage:
    """What ``pod`` counts against each quota key among ``keys`` (pods, requests.*, limits.*, cpu, memory)."""
    requests, limits = _pod_totals(pod)
    usage: Usage = {}
    for key in keys:
        if key in ("pods", "count/pods"):
            usage[key] = Decimal(1)
        elif key.startswith("requests."):
            usage[key] = requests.get(key[len("requests."):], Decimal(0))
        elif key.startswith("limits."):
            usage[key] = limits.get(key[len("limits."):], Decimal(0))
        elif key in _REQUEST_ALIASES:
            usage[key] = requests.get(key, Decimal(0))
    return usage


def is_terminal(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in TERMINAL_PHASES


# ------------------------------------------------------------------------------------ quota scopes
def _scope_matches(scope: str, operator: str, values: list[str], pod: Mapping[str, Any]) -> bool:
    spec = pod.get("spec") or {}
    if scope == "PriorityClass":
        name = spec.get("priorityClassName")
        if operator == "In":
            return name in values
        if operator == "NotIn":
            return name not in values
        return (name is not None) == (operator != "DoesNotExist")
    simple = {
        "Terminating": spec.get("activeDeadlineSeconds") is not None,
        "NotTerminating": spec.get("activeDeadlineSeconds") is None,
        "BestEffort": qos_class(pod) == "BestEffort",
        "NotBestEffort": qos_class(pod) != "BestEffort",
    }
    return simple.get(scope, True)  # unknown scopes: assume the quota applies (never under-count)


def quota_applies(quota: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
    """Does ``quota`` track ``pod``? Its ``spec.scopes`` and ``spec.scopeSelector`` must all match."""
    spec = quota.get("spec") or {}
    for scope in spec.get("scopes") or []:
        if not _scope_matches(scope, "Exists", [], pod):
            return False
    for expression in (spec.get("scopeSelector") or {}).get("matchExpressions") or []:
        if not _scope_matches(expression.get("scopeName", ""), expression.get("operator", "Exists"),
                              list(expression.get("values") or []), pod):
            return False
    return True


def namespace_usage(pods: Iterable[Mapping[str, Any]], keys: Iterable[str],
                    quota: Mapping[str, Any] | None = None) -> Usage:
    """What the non-terminal ``pods`` (those ``quota``'s scopes track) use of each key (``status.used``)."""
    keys = list(keys)
    used: Usage = {key: Decimal(0) for key in keys}
    for pod in pods:
        if is_terminal(pod) or (quota is not None and not quota_applies(quota, pod)):
            continue
        for key, value in pod_usage(pod, keys).items():
            used[key] += value
    return used


_CONSTRAINED = {"requests.cpu": ("requests", "cpu"), "requests.memory": ("requests", "memory"),
                "cpu": ("requests", "cpu"), "memory": ("requests", "memory"),
                "limits.cpu": ("limits", "cpu"), "limits.memory": ("limits", "memory")}


def missing_requirements(pod: Mapping[str, Any], hard_keys: Iterable[str]) -> list[str]:
    """Quota keys every container must set but some do not, as 'requests.cpu for: worker'.

    A quota on cpu or memory requests/limits makes kube-apiserver refuse pods that leave them unset.
    """
    out = []
    containers = (pod.get("spec") or {}).get("containers") or []
    for key in sorted(k for k in hard_keys if k in _CONSTRAINED):
        section, name = _CONSTRAINED[key]
        index = 0 if section == "requests" else 1
        lacking = sorted(c.get("name", "?") for c in containers if name not in _container_resources(c)[index])  # a set upstream
        if lacking:
            out.append(f"{key} for: {','.join(lacking)}")
    return out


def exceeded_keys(request: Mapping[str, Decimal], used: Mapping[str, Decimal], hard: Mapping[str, Decimal]) -> list[str]:
    """Keys where used + request would go over hard (only keys the request actually uses)."""
    return sorted(k for k, v in request.items() if v > 0 and k in hard and used.get(k, Decimal(0)) + v > hard[k])


def exceeded_message(pod_name: str, quota_name: str, keys: list[str], request: Mapping[str, Decimal],
                     used: Mapping[str, Decimal], hard: Mapping[str, Decimal]) -> str:
    """kube-apiserver's text for a pod over a quota."""
    return (f'pods "{pod_name}" is forbidden: exceeded quota: {quota_name}, '
            f"requested: {format_usage(request, keys)}, used: {format_usage(used, keys)}, "
            f"limited: {format_usage(hard, keys)}")


@dataclass(frozen=True)
class QuotaRoom:
    """How many more pods like one ``per_pod`` fit under one ResourceQuota, and which key binds."""

    quota: str
    fits: int | None              # None: the quota constrains nothing this pod uses
    binding: tuple[str, ...]      # keys that limit ``fits``
    per_pod: Usage
    used: Usage
    hard: Usage

    def describe(self) -> str:
        keys = list(self.binding)
        return (f"ResourceQuota {self.quota!r}: each worker pod requests {format_usage(self.per_pod, keys)}, "
                f"used: {format_usage(self.used, keys)}, limited: {format_usage(self.hard, keys)}")


def quota_room(quota: Mapping[str, Any], pod: Mapping[str, Any], used: Mapping[str, Decimal] | None = None) -> QuotaRoom:
    """How many more copies of ``pod`` fit under ``quota``; ``used`` defaults to the quota's ``status.used``.

    The admission passes the usage it computed from the namespace's pods; the preflight trusts the
    quota controller's ``status.used`` (it needs no permission to list every pod in the namespace).
    """
    name = (quota.get("metadata") or {}).get("name", "?")
    hard = parse_hard((quota.get("spec") or {}).get("hard"))
    if not quota_applies(quota, pod):
        return QuotaRoom(name, None, (), {}, {}, hard)
    if used is None:
        used = parse_hard((quota.get("status") or {}).get("used"), what="status.used")
    used = {key: used.get(key, Decimal(0)) for key in hard}
    per_pod = pod_usage(pod, hard)
    counts = {key: max(0, int((hard[key] - used[key]) // value)) for key, value in per_pod.items() if value > 0}
    if not counts:
        return QuotaRoom(name, None, (), per_pod, used, hard)
    fits = min(counts.values())
    return QuotaRoom(name, fits, tuple(sorted(k for k, c in counts.items() if c == fits)), per_pod, used, hard)
