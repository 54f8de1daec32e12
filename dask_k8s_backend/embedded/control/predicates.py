"""Scheduling rules as pure functions: may this pod go on this node, and why not.

Data flow: :class:`~dask_k8s_backend.embedded.control.scheduler.EmbeddedScheduler` turns pods and nodes
from the store into :class:`PodInfo` / :class:`NodeInfo` once, then for each pending pod calls
:func:`filter_node` on every node with that node's free resources; the failure reasons of all
nodes become the user-facing message through :func:`fit_error_message`.

The filters, their order and their messages are the kube-scheduler's default plugins
(NodeUnschedulable, TaintToleration, NodeAffinity, NodeResourcesFit): the first failing filter
gives a node's reason(s), as in ``framework.RunFilterPlugins``; the message counts reasons over
nodes and sorts them ("0/3 nodes are available: 1 Insufficient memory, 2 node(s) didn't match
Pod's node affinity/selector.").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from dask_k8s_backend.kube import resources as res

NO_NODES = "no nodes available to schedule pods"
SELECTOR_MISMATCH = "node(s) didn't match Pod's node affinity/selector"
UNSCHEDULABLE_NODE = "node(s) were unschedulable"
TOO_MANY_PODS = "Too many pods"
_SCHEDULING_EFFECTS = ("NoSchedule", "NoExecute")


@dataclass(frozen=True)
class PodInfo:
    """What scheduling needs from a pod, read once when the scheduler first sees it."""

    namespace: str
    name: str
    uid: str
    requests: Mapping[str, int]
    node_selector: Mapping[str, str] = field(default_factory=dict)
    affinity_terms: tuple[dict, ...] | None = None  # requiredDuringScheduling nodeSelectorTerms
    tolerations: tuple[dict, ...] = ()
    priority: int = 0

    @classmethod
    def from_pod(cls, pod: Mapping[str, Any]) -> "PodInfo":
        """Raises ValueError (naming the field) when a request is not a quantity."""
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                    .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
        terms = required.get("nodeSelectorTerms")
        return cls(
            namespace=meta.get("namespace") or "default",
            name=meta.get("name", ""),
            uid=meta.get("uid", ""),
            requests=res.pod_requests(pod),
            node_selector=dict(spec.get("nodeSelector") or {}),
            affinity_terms=tuple(terms) if terms is not None else None,
            tolerations=tuple(spec.get("tolerations") or ()),
            priority=int(spec.get("priority") or 0),
        )


@dataclass(frozen=True)
class NodeInfo:
    """What scheduling needs from a node."""

    name: str
    labels: Mapping[str, str]
    taints: tuple[dict, ...]
    allocatable: Mapping[str, int]
    unschedulable: bool = False

    @classmethod
    def from_node(cls, node: Mapping[str, Any]) -> "NodeInfo":
        meta, spec, status = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
        name = meta.get("name", "")
        return cls(
            name=name,
            labels=dict(meta.get("labels") or {}),
            taints=tuple(spec.get("taints") or ()),
            allocatable=res.resource_map(status.get("allocatable") or status.get("capacity"),
                                         what=f"node {name!r} status.allocatable"),
            unschedulable=bool(spec.get("unschedulable")),
        )


def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """``ToleratesTaint``: effect (empty = all), key (empty with Exists = all), Exists or Equal value."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    operator = toleration.get("operator") or "Equal"
    key = toleration.get("key") or ""
    if key != (taint.get("key") or ""):
        if not (key == "" and operator == "Exists"):
            return False
    if operator == "Exists":
        return True
    return (toleration.get("value") or "") == (taint.get("value") or "")


def untolerated_taint(tolerations: tuple[dict, ...], taints: tuple[dict, ...]) -> dict | None:
    """The first NoSchedule/NoExecute taint no toleration matches, or None."""
    for taint in taints:
        if taint.get("effect") not in _SCHEDULING_EFFECTS:
            continue
        if not any(tolerates(t, taint) for t in tolerations):
            return taint
    return None


def _match_expression(expr: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, op, values = expr.get("key", ""), expr.get("operator", ""), list(expr.get("values") or [])
    present = key in labels
    if op == "In":
        return present and labels[key] in values
    if op == "NotIn":
        return not present or labels[key] not in values
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt") and present and len(values) == 1:
        try:
            have, want = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return have > want if op == "Gt" else have < want
    return False


def _match_term(term: Mapping[str, Any], node: NodeInfo) -> bool:
    expressions = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not expressions and not fields:
        return False  # an empty term matches no objects
    if not all(_match_expression(e, node.labels) for e in expressions):
        return False
    return all(_match_expression(f, {"metadata.name": node.name}) for f in fields)


def matches_node_affinity(pod: PodInfo, node: NodeInfo) -> bool:
    """nodeSelector (all labels equal) and required node affinity (any term matches)."""
    if any(node.labels.get(k) != v for k, v in pod.node_selector.items()):
        return False
    if pod.affinity_terms is None:
        return True
    return any(_match_term(term, node) for term in pod.affinity_terms)


def filter_node(pod: PodInfo, node: NodeInfo, free: Mapping[str, int]) -> list[str]:
    """Why ``pod`` cannot go on ``node`` with ``free`` resources left: [] if it fits.

    Filters run in the default scheduler's order and the first one that fails answers.
    """
    if node.unschedulable and not any(
        tolerates(t, {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}) for t in pod.tolerations
    ):
        return [UNSCHEDULABLE_NODE]
    taint = untolerated_taint(pod.tolerations, node.taints)
    if taint is not None:
        return [f"node(s) had untolerated taint {{{taint.get('key', '')}: {taint.get('value', '')}}}"]
    if not matches_node_affinity(pod, node):
        return [SELECTOR_MISMATCH]
    return [TOO_MANY_PODS if name == res.PODS else f"Insufficient {name}"
            for name in res.insufficient(pod.requests, free)]


def fit_error_message(node_count: int, reasons_by_node: Mapping[str, list[str]]) -> str:
    """``0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector.``"""
    if node_count == 0:
        return NO_NODES
    histogram: dict[str, int] = {}
    for reasons in reasons_by_node.values():
        for reason in reasons:
            histogram[reason] = histogram.get(reason, 0) + 1
    parts = sorted(f"{count} {reason}" for reason, count in histogram.items())
    message = f"0/{node_count} nodes are available:"
    return f"{message} {', '.join(parts)}." if parts else message


def score(pod: PodInfo, node: NodeInfo, free: Mapping[str, int]) -> float:
    """LeastAllocated: the share of cpu and memory left after placing the pod (higher is better)."""
    total = 0.0
    for name in (res.CPU, res.MEMORY):
        capacity = node.allocatable.get(name, 0)
        if capacity > 0:
            total += (free.get(name, 0) - pod.requests.get(name, 0)) / capacity
    return total / 2
