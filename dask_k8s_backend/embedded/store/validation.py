"""Defaulting and validation of objects written to the embedded object store.

The store calls :func:`apply_defaults` then :func:`validate` on every create and on every
client update (PUT/PATCH), so what is stored looks like what kube-apiserver stores (pod spec
defaults, service clusterIP left to the store) and what is rejected is rejected with the same
422 ``Invalid`` Status (field paths and messages in kube-apiserver's wording).
"""

from __future__ import annotations

import re
from typing import Any

from dask_k8s_backend.kube import quotas
from dask_k8s_backend.kube.resources import parse_quantity
from ..status import StatusError, invalid

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

_LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
              "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
              "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
_SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                  "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
                  "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
_DNS1035_MSG = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
                "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
                "regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')")

# resource -> (pattern, max length, message) for metadata.name
_NAME_RULES = {
    "namespaces": (DNS1123_LABEL, 63, _LABEL_MSG),
    "services": (DNS1035_LABEL, 63, _DNS1035_MSG),
}
_DEFAULT_NAME_RULE = (DNS1123_SUBDOMAIN, 253, _SUBDOMAIN_MSG)
_RESTART_POLICIES = ("Always", "OnFailure", "Never")

Causes = list[tuple[str, str]]


def check_name(resource: str, name: Any) -> Causes:
    """Causes against ``metadata.name`` for ``resource``; empty when valid."""
    if not name:
        return [("metadata.name", "Required value: name or generateName is required")]
    pattern, limit, message = _NAME_RULES.get(resource, _DEFAULT_NAME_RULE)
    if not isinstance(name, str) or len(name) > limit or not pattern.match(name):
        return [("metadata.name", f'Invalid value: "{name}": {message}')]
    return []


def _check_labels(labels: Any) -> Causes:
    if labels is None:
        return []
    if not isinstance(labels, dict):
        return [("metadata.labels", "Invalid value: labels must be a map of strings")]
    causes: Causes = []
    for key, value in labels.items():
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            causes.append((f"metadata.labels", f'Invalid value: "{value}": a valid label must be an empty string '
                           "or consist of alphanumeric characters, '-', '_' or '.', and must start and end "
                           "with an alphanumeric character"))
        prefix, _, base = key.rpartition("/")
        if not base or len(base) > 63 or not re.match(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$", base) or (
                prefix and not DNS1123_SUBDOMAIN.match(prefix)):
            causes.append(("metadata.labels", f'Invalid value: "{key}": name part must consist of alphanumeric '
                           "characters, '-', '_' or '.', and must start and end with an alphanumeric character"))
    return causes


def _check_resources(path: str, resources: Any) -> Causes:
    causes: Causes = []
    parsed: dict[str, dict[str, Any]] = {}
    for section in ("limits", "requests"):
        for key, value in ((resources or {}).get(section) or {}).items():
            if section == "requests" and value == ((resources or {}).get("limits") or {}).get(key) \
                    and key not in parsed.get("limits", {}):
                continue  # defaulted from an invalid limit, already reported
            try:
                parsed.setdefault(section, {})[key] = parse_quantity(value)
            except ValueError:
                causes.append((f"{path}.resources.{section}[{key}]",
                               f'Invalid value: "{value}": quantities must match the regular expression '
                               "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"))
    for key, request in parsed.get("requests", {}).items():
        limit = parsed.get("limits", {}).get(key)
        if limit is not None and request > limit:
            causes.append((f"{path}.resources.requests",
                           f'Invalid value: "{resources["requests"][key]}": must be less than or equal to '
                           f"{key} limit of {resources['limits'][key]}"))
    return causes


def _check_containers(field: str, containers: Any, required: bool) -> Causes:
    if not containers:
        return [(f"spec.{field}", "Required value")] if required else []
    if not isinstance(containers, list):
        return [(f"spec.{field}", "Invalid value: must be a list of containers")]
    causes: Causes = []
    seen: set[str] = set()
    for i, container in enumerate(containers):
        path = f"spec.{field}[{i}]"
        name = (container or {}).get("name")
        if not name:
            causes.append((f"{path}.name", "Required value"))
        elif not isinstance(name, str) or len(name) > 63 or not DNS1123_LABEL.match(name):
            causes.append((f"{path}.name", f'Invalid value: "{name}": {_LABEL_MSG}'))
        elif name in seen:
            causes.append((f"{path}.name", f'Duplicate value: "{name}"'))
        else:
            seen.add(name)
        if not (container or {}).get("image"):
            causes.append((f"{path}.image", "Required value"))
        causes += _check_resources(path, (container or {}).get("resources"))
    return causes


def _check_pod(pod: dict) -> Causes:
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return [("spec.containers", "Required value")]
    causes = _check_containers("containers", spec.get("containers"), True)
    causes += _check_containers("initContainers", spec.get("initContainers"), False)
    policy = spec.get("restartPolicy")
    if policy not in _RESTART_POLICIES:
        causes.append(("spec.restartPolicy", f'Unsupported value: "{policy}": supported values: '
                       '"Always", "OnFailure", "Never"'))
    return causes


def _check_lease(spec: dict) -> list[tuple[str, str]]:
    """As upstream's ValidateLeaseSpec: durations and transitions are not negative (duration above 0)."""
    causes = []
    duration, transitions = spec.get("leaseDurationSeconds"), spec.get("leaseTransitions")
    if duration is not None and (not isinstance(duration, int) or duration <= 0):
        causes.append(("spec.leaseDurationSeconds", f"Invalid value: {duration}: must be greater than 0"))
    if transitions is not None and (not isinstance(transitions, int) or transitions < 0):
        causes.append(("spec.leaseTransitions", f"Invalid value: {transitions}: must be greater than or equal to 0"))
    return causes


def _check_event(event: dict) -> Causes:
    """Upstream's legacyValidateEvent for an event without ``eventTime``: its namespace and its object's agree.

    An empty ``involvedObject.namespace`` is accepted in the default namespace only (old clients).
    """
    if event.get("eventTime"):
        return []
    namespace = (event.get("metadata") or {}).get("namespace") or ""
    involved = (event.get("involvedObject") or {}).get("namespace") or ""
    if involved == namespace or (not involved and namespace == "default"):
        return []
    return [("involvedObject.namespace", f'Invalid value: "{involved}": does not match event.namespace')]


def validate(resource: str, kind: str, obj: dict) -> None:
    """Raise 422 Invalid when ``obj`` (already defaulted) would be rejected by kube-apiserver."""
    meta = obj.get("metadata") or {}
    causes = check_name(resource, meta.get("name")) + _check_labels(meta.get("labels"))
    if resource == "pods":
        causes += _check_pod(obj)
    if resource == "leases":
        causes += _check_lease(obj.get("spec") or {})
    if resource == "events":
        causes += _check_event(obj)
    if causes:
        raise invalid(kind, str(meta.get("name") or meta.get("generateName") or ""), causes)


def _default_container(container: dict) -> None:
    image = str(container.get("image") or "")
    tag_latest = ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")
    if "@" in image:
        tag_latest = False
    container.setdefault("imagePullPolicy", "Always" if tag_latest else "IfNotPresent")
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    container.setdefault("resources", {})
    resources = container["resources"]
    if isinstance(resources, dict) and resources.get("limits") and not resources.get("requests"):
        resources["requests"] = dict(resources["limits"])
    elif isinstance(resources, dict) and resources.get("limits"):
        for key, value in resources["limits"].items():
            resources["requests"].setdefault(key, value)
    for port in container.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")


def apply_defaults(resource: str, obj: dict) -> None:
    """Fill in the defaults kube-apiserver sets, in place."""
    if resource == "pods":
        spec = obj.setdefault("spec", {})
        if not isinstance(spec, dict):
            return
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("securityContext", {})
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("priority", 0)
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
        if spec.get("serviceAccount") and not spec.get("serviceAccountName"):
            spec["serviceAccountName"] = spec["serviceAccount"]
        spec.setdefault("serviceAccountName", "default")
        spec.setdefault("serviceAccount", spec["serviceAccountName"])
        for field in ("containers", "initContainers"):
            for container in spec.get(field) or []:
                if isinstance(container, dict):
                    _default_container(container)
        status = obj.setdefault("status", {})
        if isinstance(status, dict):
            status.setdefault("phase", "Pending")
    elif resource == "namespaces":
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj.setdefault("status", {}).setdefault("phase", "Active")
    elif resource == "limitranges":
        spec = obj.get("spec")
        if isinstance(spec, dict) and isinstance(spec.get("limits"), list):
            spec["limits"] = [quotas.limit_range_item_defaults(i) if isinstance(i, dict) else i for i in spec["limits"]]
    elif resource == "secrets":
        obj.setdefault("type", "Opaque")
    elif resource == "services":
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        for port in spec.get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")
                port.setdefault("targetPort", port.get("port"))


_MUTABLE_POD_SPEC = ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds")


def _without_mutable(spec: dict) -> dict:
    spec = {k: v for k, v in spec.items() if k not in _MUTABLE_POD_SPEC}
    for field in ("containers", "initContainers"):
        if isinstance(spec.get(field), list):
            spec[field] = [{k: v for k, v in c.items() if k != "image"} if isinstance(c, dict) else c
                           for c in spec[field]]
    return spec


def check_update(resource: str, kind: str, old: dict, new: dict) -> None:
    """422 when a client update changes what kube-apiserver keeps immutable (pod spec)."""
    if resource != "pods":
        return
    if _without_mutable(old.get("spec") or {}) != _without_mutable(new.get("spec") or {}):
        name = old["metadata"]["name"]
        raise StatusError(422, "Invalid", f'Pod "{name}" is invalid: spec: Forbidden: pod updates may not change '
                          "fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, "
                          "`spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing "
                          "tolerations), `spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it "
                          "was previously negative)",
                          {"name": name, "kind": kind,
                           "causes": [{"reason": "FieldValueForbidden", "field": "spec",
                                       "message": "Forbidden: pod updates may not change fields"}]})


def check_status_update(resource: str, kind: str, old_status: dict, new: dict) -> None:
    """422 when a status update changes what kube-apiserver keeps immutable (a pod's ``status.qosClass``).

    Upstream: ``ValidateImmutableField`` on ``status.qosClass`` in ValidatePodStatusUpdate
    (pkg/apis/core/validation/validation.go).
    """
    if resource != "pods":
        return
    before, after = old_status.get("qosClass"), (new.get("status") or {}).get("qosClass")
    if before != after:
        name = str((new.get("metadata") or {}).get("name") or "")
        raise invalid(kind, name, [("status.qosClass", f'Invalid value: "{after or ""}": field is immutable')])
