"""``kubectl get`` tables: the ``meta.k8s.io/v1 Table`` the API server answers ``Accept: ...;as=Table`` with.

kubectl asks for server-side printing; we build, from the stored objects, the columns
kube-apiserver v1.36 prints (pkg/printers/internalversion/printers.go; priority-1 columns in
brackets, shown by ``-o wide``):

- pods: NAME READY STATUS RESTARTS AGE [IP NODE NOMINATED NODE READINESS GATES]
- nodes: NAME STATUS ROLES AGE VERSION [INTERNAL-IP EXTERNAL-IP OS-IMAGE KERNEL-VERSION CONTAINER-RUNTIME]
- events: LAST SEEN TYPE REASON OBJECT [SUBOBJECT SOURCE] MESSAGE [FIRST SEEN COUNT NAME]
- namespaces: NAME STATUS AGE; configmaps: NAME DATA AGE; secrets: NAME TYPE DATA AGE
- services: NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE [SELECTOR]
- resourcequotas: NAME REQUEST LIMIT AGE; leases: NAME HOLDER AGE; limitranges: NAME CREATED AT
- everything else: NAME AGE

Every kubectl version prints what the server sends, so these are what a user of any kubectl sees.
"""

from __future__ import annotations

import calendar
import time
from typing import Any, Callable

from ..store.resource_table import ResourceInfo

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
            (pod.get("spec") or {}).get("nodeName") or "<none>",
            (pod.get("status") or {}).get("nominatedNodeName") or "<none>", _readiness_gates(pod)]


def _readiness_gates(pod: dict) -> str:
    """``<none>``, or how many of the pod's readiness gates have a True condition, as ``1/2``."""
    gates = [g.get("conditionType") for g in (pod.get("spec") or {}).get("readinessGates") or []]
    if not gates:
        return "<none>"
    true = {c.get("type") for c in (pod.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}
    return f"{sum(1 for g in gates if g in true)}/{len(gates)}"


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
    info = (node.get("status") or {}).get("nodeInfo") or {}
    return [node["metadata"]["name"], status, roles, age(node["metadata"].get("creationTimestamp")), version,
            _node_address(node, "InternalIP"), _node_address(node, "ExternalIP"),
            info.get("osImage") or "<unknown>", info.get("kernelVersion") or "<unknown>",
            info.get("containerRuntimeVersion") or "<unknown>"]


def _node_address(node: dict, kind: str) -> str:
    found = [a.get("address") for a in (node.get("status") or {}).get("addresses") or [] if a.get("type") == kind]
    return found[0] if found else "<none>"


def _event_source(event: dict) -> str:
    """``component, host`` from ``source``, else ``reportingController, reportingInstance`` (formatEventSource)."""
    source = event.get("source") or {}
    component, host = source.get("component"), source.get("host")
    if not component:
        component, host = event.get("reportingComponent") or "", event.get("reportingInstance")
    return f"{component}, {host}" if host else component


def _event_row(event: dict) -> list[Any]:
    """Upstream printEvent (wide cells: the server always sends every column)."""
    first = age(event.get("firstTimestamp") or _seconds(event.get("eventTime")))
    last = age(event.get("lastTimestamp")) if event.get("lastTimestamp") else first
    count = event.get("count") or 1
    if event.get("series"):
        last, count = age(_seconds(event["series"].get("lastObservedTime"))), event["series"].get("count") or 1
    involved = event.get("involvedObject") or {}
    target = (involved.get("kind") or "").lower() + (f"/{involved['name']}" if involved.get("name") else "")
    return [last, event.get("type") or "", event.get("reason") or "", target, involved.get("fieldPath") or "",
            _event_source(event), (event.get("message") or "").strip(), first, count, event["metadata"]["name"]]


def _seconds(micro_time: str | None) -> str | None:
    """A MicroTime (``...T15:58:10.123456Z``) cut to the seconds :func:`age` parses."""
    return micro_time.split(".")[0].rstrip("Z") + "Z" if micro_time else None


def _lease_row(lease: dict) -> list[Any]:
    return [lease["metadata"]["name"], (lease.get("spec") or {}).get("holderIdentity") or "",
            age(lease["metadata"].get("creationTimestamp"))]


def _limitrange_row(limit_range: dict) -> list[Any]:
    return [limit_range["metadata"]["name"], limit_range["metadata"].get("creationTimestamp") or ""]


def _namespace_row(namespace: dict) -> list[Any]:
    phase = (namespace.get("status") or {}).get("phase") or "Active"
    return [namespace["metadata"]["name"], phase, age(namespace["metadata"].get("creationTimestamp"))]


def _data_count(obj: dict) -> int:
    """The DATA column of configmaps and secrets: keys in ``data`` plus ``binaryData``/``stringData``."""
    return sum(len(obj.get(field) or {}) for field in ("data", "binaryData", "stringData"))


def _configmap_row(configmap: dict) -> list[Any]:
    return [configmap["metadata"]["name"], _data_count(configmap), age(configmap["metadata"].get("creationTimestamp"))]


def _secret_row(secret: dict) -> list[Any]:
    return [secret["metadata"]["name"], secret.get("type") or "Opaque", _data_count(secret),
            age(secret["metadata"].get("creationTimestamp"))]


def _service_external_ip(service: dict) -> str:
    spec = service.get("spec") or {}
    kind = spec.get("type") or "ClusterIP"
    if kind == "ExternalName":
        return spec.get("externalName") or "<none>"
    if kind == "LoadBalancer":
        ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        found = [i.get("ip") or i.get("hostname") for i in ingress] + list(spec.get("externalIPs") or [])
        return ",".join(f for f in found if f) or "<pending>"
    return ",".join(spec.get("externalIPs") or []) or "<none>"


def _service_ports(service: dict) -> str:
    """``80/TCP``, ``80:30080/TCP`` with a node port, comma-separated; ``<none>`` without ports."""
    ports = []
    for port in (service.get("spec") or {}).get("ports") or []:
        node = f":{port['nodePort']}" if port.get("nodePort") else ""
        ports.append(f"{port.get('port')}{node}/{port.get('protocol') or 'TCP'}")
    return ",".join(ports) or "<none>"


def _service_row(service: dict) -> list[Any]:
    spec = service.get("spec") or {}
    kind = spec.get("type") or "ClusterIP"
    cluster_ip = "<none>" if kind == "ExternalName" else spec.get("clusterIP") or "<none>"
    selector = ",".join(f"{k}={v}" for k, v in sorted((spec.get("selector") or {}).items())) or "<none>"
    return [service["metadata"]["name"], kind, cluster_ip, _service_external_ip(service), _service_ports(service),
            age(service["metadata"].get("creationTimestamp")), selector]


def _quota_row(quota: dict) -> list[Any]:
    """REQUEST and LIMIT: ``resource: used/hard`` by sorted name, ``limits.*`` in LIMIT (upstream's printer)."""
    hard = (quota.get("spec") or {}).get("hard") or {}
    used = (quota.get("status") or {}).get("used") or {}
    columns: dict[bool, list[str]] = {False: [], True: []}
    for name in sorted(hard):
        columns[name.split(".")[0] == "limits" and "." in name].append(f"{name}: {used.get(name, '0')}/{hard[name]}")
    return [quota["metadata"]["name"], ", ".join(columns[False]), ", ".join(columns[True]),
            age(quota["metadata"].get("creationTimestamp"))]


def _default_row(obj: dict) -> list[Any]:
    return [obj["metadata"]["name"], age(obj["metadata"].get("creationTimestamp"))]


_POD_COLUMNS = [_NAME, _column("Ready"), _column("Status"), _column("Restarts", "integer"), _AGE,
                _column("IP", priority=1), _column("Node", priority=1), _column("Nominated Node", priority=1),
                _column("Readiness Gates", priority=1)]

# resource -> (columns, row of one object); others print NAME AGE
_PRINTERS: dict[str, tuple[list[dict[str, Any]], Callable[[dict], list[Any]]]] = {
    "pods": (_POD_COLUMNS, _pod_row),
    "nodes": ([_NAME, _column("Status"), _column("Roles"), _AGE, _column("Version"),
               *(_column(name, priority=1) for name in ("Internal-IP", "External-IP", "OS-Image", "Kernel-Version",
                                                        "Container-Runtime"))], _node_row),
    "events": ([_column("Last Seen"), _column("Type"), _column("Reason"), _column("Object"),
                _column("Subobject", priority=1), _column("Source", priority=1), _column("Message"),
                _column("First Seen", priority=1), _column("Count", "integer", priority=1),
                _column("Name", priority=1)], _event_row),
    "leases": ([_NAME, _column("Holder"), _AGE], _lease_row),
    "limitranges": ([_NAME, _column("Created At", "date")], _limitrange_row),
    "namespaces": ([_NAME, _column("Status"), _AGE], _namespace_row),
    "configmaps": ([_NAME, _column("Data", "integer"), _AGE], _configmap_row),
    "secrets": ([_NAME, _column("Type"), _column("Data", "integer"), _AGE], _secret_row),
    "services": ([_NAME, _column("Type"), _column("Cluster-IP"), _column("External-IP"), _column("Port(s)"), _AGE,
                  _column("Selector", priority=1)], _service_row),
    "resourcequotas": ([_NAME, _column("Request"), _column("Limit"), _AGE], _quota_row),
}


def table_for(info: ResourceInfo, objects: list[dict], resource_version: str, token: str | None) -> dict:
    """A Table with one row per object (each row carries a PartialObjectMetadata)."""
    columns, row = _PRINTERS.get(info.name, ([_NAME, _AGE], _default_row))
    rows = []
    for obj in objects:
        cells = row(obj)
        rows.append({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                                "metadata": obj["metadata"]}})
    meta: dict[str, Any] = {"resourceVersion": resource_version}
    if token:
        meta["continue"] = token
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": columns,
            "rows": rows}
