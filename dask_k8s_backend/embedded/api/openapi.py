"""The OpenAPI v3 documents kubectl reads before ``create -f`` / ``apply -f``.

kubectl (v1.27+) validates manifests on the server when the server says it can: it fetches
``/openapi/v3`` (an index of group-versions) and ``/openapi/v3/api/v1``, looks for the PATCH
operation tagged with the object's ``x-kubernetes-group-version-kind`` and checks that it takes
the ``fieldValidation`` query parameter. We publish exactly that (paths and operations, no
schemas), so kubectl sends ``fieldValidation=Strict`` and the API server checks unknown fields
itself (see :func:`unknown_fields`); for strategic merge patches kubectl then falls back to its
compiled-in types, which carry the right merge keys.

kubectl up to v1.27 asks the same question of ``/openapi/v2`` instead, and only as protobuf
(gnostic's ``openapi_v2.Document``): it looks for a PATCH operation carrying the object's
``x-kubernetes-group-version-kind`` extension (YAML) and a query parameter named
``fieldValidation``. Without that document it fails ``create -f`` with NotFound, so
:func:`v2_protobuf_document` encodes the same paths and operations, with the field numbers
upstream's document uses (checked against kube-apiserver v1.36's ``/openapi/v2``).
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

from ..store.resource_table import RESOURCES

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


V2_PROTOBUF_MEDIA_TYPE = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _pb(number: int, payload: bytes | str) -> bytes:
    """One length-delimited protobuf field (a string or an embedded message)."""
    data = payload.encode() if isinstance(payload, str) else payload
    return _key(number, 2) + _varint(len(data)) + data


def _v2_extension(name: str, yaml_value: str) -> bytes:
    """gnostic NamedAny{name=1, value=Any{yaml=2}}."""
    return _pb(1, name) + _pb(2, _pb(2, yaml_value))


def _v2_query_parameter(name: str) -> bytes:
    """ParametersItem{parameter=1: Parameter{non_body=2: NonBodyParameter{query=3: {in=2, name=4, type=6}}}}."""
    return _pb(1, _pb(2, _pb(3, _pb(2, "query") + _pb(4, name) + _pb(6, "string"))))


def _v2_operation(kind: str, action: str) -> bytes:
    """gnostic Operation: operation_id=5, parameters=8, vendor_extension=13."""
    gvk = f'group: ""\nkind: {kind}\nversion: v1\n'
    return (_pb(5, f"{action}CoreV1{kind}") + b"".join(_pb(8, _v2_query_parameter(q)) for q in _QUERY_PARAMS)
            + _pb(13, _v2_extension("x-kubernetes-action", action))
            + _pb(13, _v2_extension("x-kubernetes-group-version-kind", gvk)))


@functools.lru_cache(maxsize=1)
def v2_json_document() -> bytes:
    """``GET /openapi/v2`` as JSON (Swagger 2.0): the same operations, for clients that ask for JSON."""
    paths = {path: {verb: {"operationId": op["operationId"], "x-kubernetes-action": op["x-kubernetes-action"],
                           "x-kubernetes-group-version-kind": op["x-kubernetes-group-version-kind"],
                           "parameters": [{"name": q, "in": "query", "type": "string", "uniqueItems": True}
                                          for q in _QUERY_PARAMS]}
                    for verb, op in operations.items()}
             for path, operations in json.loads(core_v1_document())["paths"].items()}
    doc = {"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.32.0-embedded"}, "paths": paths}
    return json.dumps(doc, separators=(",", ":")).encode()


# gnostic PathItem field numbers of the operations we publish
_V2_OPERATION_FIELDS = {"get": 2, "put": 3, "post": 4, "delete": 5, "patch": 8}


@functools.lru_cache(maxsize=1)
def v2_protobuf_document() -> bytes:
    """``GET /openapi/v2`` as protobuf: Document{swagger=1, info=2, paths=8: Paths{path=2: NamedPathItem}}."""
    paths = b""
    for path, operations in json.loads(core_v1_document())["paths"].items():
        item = b"".join(_pb(_V2_OPERATION_FIELDS[verb], _v2_operation(op["x-kubernetes-group-version-kind"]["kind"],
                                                                      op["x-kubernetes-action"]))
                        for verb, op in operations.items())
        paths += _pb(2, _pb(1, path) + _pb(2, item))
    return _pb(1, "2.0") + _pb(2, _pb(1, "Kubernetes") + _pb(2, "v1.32.0-embedded")) + _pb(8, paths)


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
