"""The OpenAPI v3 documents kubectl reads before ``create -f`` / ``apply -f``.

kubectl (v1.27+) validates manifests on the server when the server says it can: it fetches
``/openapi/v3`` (an index of group-versions) and ``/openapi/v3/api/v1``, looks for the PATCH
operation tagged with the object's ``x-kubernetes-group-version-kind`` and checks that it takes
the ``fieldValidation`` query parameter. We publish exactly that (paths and operations, no
schemas), so kubectl sends ``fieldValidation=Strict`` and the API server checks unknown fields
itself (see :func:`unknown_fields`); for strategic merge patches kubectl then falls back to its
compiled-in types, which carry the right merge keys. ``/openapi/v2`` is answered with 404
because kubectl only accepts it as protobuf.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

from .store import RESOURCES

_QUERY_PARAMS = ("fieldValidation", "dryRun", "fieldManager", "pretty")


def _operation(kind: str, action: str) -> dict[str, Any]:
    return {
        "operationId": f"{action}CoreV1{kind}",
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": "", "version": "v1", "kind": kind},
        "parameters": [{"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
                       for name in _QUERY_PARAMS],
        "responses": {"200": {"description": "OK"}},
    }


@functools.lru_cache(maxsize=1)
def core_v1_document() -> bytes:
    """``GET /openapi/v3/api/v1``."""
    paths: dict[str, Any] = {}
    for info in RESOURCES.values():
        prefix = "/api/v1/namespaces/{namespace}/" if info.namespaced else "/api/v1/"
        paths[prefix + info.name] = {"get": _operation(info.kind, "list"), "post": _operation(info.kind, "post")}
        paths[prefix + info.name + "/{name}"] = {
            "get": _operation(info.kind, "get"), "put": _operation(info.kind, "put"),
            "patch": _operation(info.kind, "patch"), "delete": _operation(info.kind, "delete")}
    doc = {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0-embedded"}, "paths": paths,
           "components": {"schemas": {}}}
    return json.dumps(doc, separators=(",", ":")).encode()


@functools.lru_cache(maxsize=1)
def root_document() -> bytes:
    """``GET /openapi/v3``: where each group-version's document is (with a content hash)."""
    digest = hashlib.sha512(core_v1_document()).hexdigest()[:32].upper()
    return json.dumps({"paths": {"api/v1": {"serverRelativeURL": f"/openapi/v3/api/v1?hash={digest}"}}}).encode()


# Known fields for server-side strict field validation of pods (the manifests users write).
_POD_FIELDS = {"apiVersion", "kind", "metadata", "spec", "status"}
_META_FIELDS = {"name", "generateName", "namespace", "labels", "annotations", "ownerReferences", "finalizers",
                "uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                "generation", "managedFields", "selfLink"}
_POD_SPEC_FIELDS = {
    "activeDeadlineSeconds", "affinity", "automountServiceAccountToken", "containers", "dnsConfig", "dnsPolicy",
    "enableServiceLinks", "ephemeralContainers", "hostAliases", "hostIPC", "hostNetwork", "hostPID", "hostUsers",
    "hostname", "imagePullSecrets", "initContainers", "nodeName", "nodeSelector", "os", "overhead",
    "preemptionPolicy", "priority", "priorityClassName", "readinessGates", "resourceClaims", "resources",
    "restartPolicy", "runtimeClassName", "schedulerName", "schedulingGates", "securityContext", "serviceAccount",
    "serviceAccountName", "setHostnameAsFQDN", "shareProcessNamespace", "subdomain",
    "terminationGracePeriodSeconds", "tolerations", "topologySpreadConstraints", "volumes"}
_CONTAINER_FIELDS = {
    "args", "command", "env", "envFrom", "image", "imagePullPolicy", "lifecycle", "livenessProbe", "name",
    "ports", "readinessProbe", "resizePolicy", "resources", "restartPolicy", "securityContext", "startupProbe",
    "stdin", "stdinOnce", "terminationMessagePath", "terminationMessagePolicy", "tty", "volumeDevices",
    "volumeMounts", "workingDir"}


def unknown_fields(resource: str, obj: dict[str, Any]) -> list[str]:
    """Field paths in ``obj`` that a v1 object of ``resource`` does not have (checked for pods only)."""
    if resource != "pods" or not isinstance(obj, dict):
        return []
    found = [k for k in obj if k not in _POD_FIELDS]
    found += [f"metadata.{k}" for k in (obj.get("metadata") or {}) if k not in _META_FIELDS]
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    found += [f"spec.{k}" for k in spec if k not in _POD_SPEC_FIELDS]
    for field in ("containers", "initContainers"):
        for i, container in enumerate(spec.get(field) or []):
            if isinstance(container, dict):
                found += [f"spec.{field}[{i}].{k}" for k in container if k not in _CONTAINER_FIELDS]
    return found
