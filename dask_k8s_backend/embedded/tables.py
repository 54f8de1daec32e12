"""``kubectl get`` tables: the ``meta.k8s.io/v1 Table`` the API server answers ``Accept: ...;as=Table`` with.

kubectl asks for server-side printing; we build the columns kubectl shows for a real cluster
(pods: NAME READY STATUS RESTARTS AGE [IP NODE]; nodes: NAME STATUS ROLES AGE VERSION; everything else:
NAME AGE) from the stored objects.
"""

from __future__ import annotations

import calendar
import time
from typing import Any

from .store import ResourceInfo

_NAME = {"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}
_AGE = {"name": "Age", "type": "string", "format": "", "description": "Age", "priority": 0}


def age(timestamp: str | None, now: float | None = None) -> str:
    """``5s``, ``3m``, ``2h``, ``4d`` as kubectl prints ages."""
    if not timestamp:
        return "<unknown>"
    seconds = int((now or time.time()) - calendar.timegm(time.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ")))
    seconds = max(seconds, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * 2 or (unit == "m" and seconds >= 120):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _pod_status(pod: dict) -> str:
    if pod["metadata"].get("deletionTimestamp"):
        return "Terminating"
    status = pod.get("status") or {}
    reason = status.get("reason")
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        detail = state.get("waiting") or state.get("terminated") or {}
        if detail.get("reason"):  # kubectl shows the container's reason, "Completed" included
            reason = detail["reason"]
        elif state.get("terminated"):
            reason = f"ExitCode:{state['terminated'].get('exitCode', 0)}"
    return reason or status.get("phase") or "Unknown"


def _pod_row(pod: dict) -> list[Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    total = len((pod.get("spec") or {}).get("containers") or [])
    ready = sum(1 for cs in statuses if cs.get("ready"))
    restarts = sum(int(cs.get("restartCount") or 0) for cs in statuses)
    return [pod["metadata"]["name"], f"{ready}/{total}", _pod_status(pod), restarts,
            age(pod["metadata"].get("creationTimestamp")), (pod.get("status") or {}).get("podIP") or "<none>",
            (pod.get("spec") or {}).get("nodeName") or "<none>"]


def _column(name: str, type_: str = "string", priority: int = 0) -> dict[str, Any]:
    return {"name": name, "type": type_, "format": "", "priority": priority, "description": name}


def _node_row(node: dict) -> list[Any]:
    conditions = {c.get("type"): c.get("status") for c in (node.get("status") or {}).get("conditions") or []}
    status = "Ready" if conditions.get("Ready") == "True" else "NotReady"
    if (node.get("spec") or {}).get("unschedulable"):
        status += ",SchedulingDisabled"
    labels = node["metadata"].get("labels") or {}
    roles = ",".join(sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/"))) or "<none>"
    version = ((node.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion") or "<none>"
    return [node["metadata"]["name"], status, roles, age(node["metadata"].get("creationTimestamp")), version]


def table_for(info: ResourceInfo, objects: list[dict], resource_version: str, token: str | None) -> dict:
    """A Table with one row per object (each row carries a PartialObjectMetadata)."""
    if info.name == "pods":
        columns = [_NAME, {"name": "Ready", "type": "string", "format": "", "priority": 0, "description": "Ready"},
                   {"name": "Status", "type": "string", "format": "", "priority": 0, "description": "Status"},
                   {"name": "Restarts", "type": "integer", "format": "", "priority": 0, "description": "Restarts"},
                   _AGE, {"name": "IP", "type": "string", "format": "", "priority": 1, "description": "Pod IP"},
                   {"name": "Node", "type": "string", "format": "", "priority": 1, "description": "Node"}]
    elif info.name == "nodes":
        columns = [_NAME, _column("Status"), _column("Roles"), _AGE, _column("Version")]
    else:
        columns = [_NAME, _AGE]
    rows = []
    for obj in objects:
        if info.name == "pods":
            cells = _pod_row(obj)
        elif info.name == "nodes":
            cells = _node_row(obj)
        else:
            cells = [obj["metadata"]["name"], age(obj["metadata"].get("creationTimestamp"))]
        rows.append({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                                "metadata": obj["metadata"]}})
    meta: dict[str, Any] = {"resourceVersion": resource_version}
    if token:
        meta["continue"] = token
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": columns,
            "rows": rows}
