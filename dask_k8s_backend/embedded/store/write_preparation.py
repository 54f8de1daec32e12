"""What a write does to an object before it is stored, as upstream's registry strategies do (a mixin of
:class:`ObjectStore`).

Namespace checks, generated names, the uid, timestamps, the status a new object starts with, a
pod's QoS class and generation, service cluster IPs, secret ``stringData``; on updates the
system metadata clients cannot change. Apart from the store's versioning because none of it
depends on versions or watchers: it only shapes the object that is about to be committed.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from dask_k8s_backend.kube.resources import pod_qos_class
from ..podstatus import rfc3339
from ..status import StatusError, bad_request, not_found
from .entries import dumps
from .resource_table import ResourceInfo
from .validation import check_status_update

_NAME_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"

# The status an object starts with whatever the client sent (upstream's PrepareForCreate of each
# registry strategy, pkg/registry/core/*/strategy.go); nodes keep theirs, as upstream lets them.
_STATUS_AT_CREATE: dict[str, str] = {
    "pods": '{"phase": "Pending"}',
    "namespaces": '{"phase": "Active"}',
    "services": '{"loadBalancer": {}}',
    "persistentvolumeclaims": '{"phase": "Pending"}',
    "resourcequotas": "{}",
}


class WritePreparation:
    """Defaults of :class:`~.object_store.ObjectStore` writes that need its state (objects, clock, service IPs)."""

    def _namespace_for(self, info: ResourceInfo, namespace: str | None, meta: dict) -> str | None:
        if not info.namespaced:
            meta.pop("namespace", None)
            return None
        body_ns = meta.get("namespace")
        if namespace is None:
            namespace = body_ns or "default"
        elif body_ns not in (None, "", namespace):
            raise bad_request("the namespace of the provided object does not match the namespace sent on the "
                              "request")
        meta["namespace"] = namespace
        ns_entry = self._objects["namespaces"].get((None, namespace))
        if ns_entry is None:
            raise not_found("namespaces", namespace)
        if ns_entry.meta.get("deletionTimestamp"):
            raise StatusError(403, "Forbidden", f"unable to create new content in namespace {namespace} because "
                                                "it is being terminated",
                              {"name": namespace, "kind": "namespaces",
                               "causes": [{"reason": "NamespaceTerminating", "field": "metadata.namespace",
                                           "message": f"namespace {namespace} is being terminated"}]})
        return namespace

    def _generate_name(self, resource: str, namespace: str | None, prefix: str) -> str:
        prefix = prefix[:58]
        for _ in range(100):
            name = prefix + "".join(self._random.choice(_NAME_SUFFIX_ALPHABET) for _ in range(5))
            if (namespace, name) not in self._objects[resource]:
                return name
        raise StatusError(500, "AlreadyExists", f"could not generate a unique name from generateName {prefix!r}")

    def _prepare_new(self, info: ResourceInfo, obj: dict, meta: dict, dry_run: bool = False) -> None:
        obj["kind"], obj["apiVersion"] = info.kind, info.group_version
        drop_empty_meta_fields(meta)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = rfc3339(self._clock())
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
            meta.pop(field, None)
        meta.pop("generation", None)
        qos = pod_qos_class(obj) if info.name == "pods" else None  # read before the client's status goes, as upstream
        if info.name in _STATUS_AT_CREATE:  # upstream strategies' PrepareForCreate: a client's status is dropped
            obj["status"] = json.loads(_STATUS_AT_CREATE[info.name])
        if qos is not None:
            # kube-apiserver's pod PrepareForCreate: generation 1 and the QoS class, fixed for the pod's life
            meta["generation"] = 1
            obj["status"]["qosClass"] = qos
        if info.name == "services" and obj["spec"].get("type") != "ExternalName":
            if not obj["spec"].get("clusterIP"):
                n = self._next_service_ip
                self._next_service_ip += 0 if dry_run else 1  # a dry run shows the next address, keeps it free
                obj["spec"]["clusterIP"] = f"10.96.{n // 250}.{n % 250 + 1}"
            obj["spec"].setdefault("clusterIPs", [obj["spec"]["clusterIP"]])
        if info.name == "secrets" and obj.get("stringData"):
            data = obj.setdefault("data", {})
            for k, v in obj.pop("stringData").items():
                data[k] = base64.b64encode(str(v).encode()).decode()


def copy_object(obj: Any) -> dict:
    if not isinstance(obj, dict):
        raise bad_request(f"the object must be a JSON object, got {type(obj).__name__}")
    try:
        return json.loads(dumps(obj))
    except (TypeError, ValueError) as e:
        raise bad_request(f"the object is not valid JSON: {e}") from None


def keep_system_metadata(meta: dict, old_meta: dict) -> None:
    """Fields clients cannot change through an update."""
    for field in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "namespace",
                  "name", "generateName", "generation"):
        if field in old_meta:
            meta[field] = old_meta[field]
        else:
            meta.pop(field, None)


def bump_generation(info: ResourceInfo, old: dict, new: dict) -> None:
    """A pod's spec change is a new generation (upstream pod strategy updatePodGeneration)."""
    if info.name == "pods" and new["metadata"].get("generation") and new.get("spec") != old.get("spec"):
        new["metadata"]["generation"] += 1


# ObjectMeta's omitempty maps and lists: upstream stores and returns no ``annotations: {}``
_OMITTED_WHEN_EMPTY = ("labels", "annotations", "ownerReferences", "finalizers")


def drop_empty_meta_fields(meta: dict) -> None:
    """Drop empty labels, annotations, ownerReferences and finalizers, as Go's omitempty does upstream.

    A client that sends ``annotations: {}`` (``kubectl diff``'s dry-run patch of an object
    created without annotations) otherwise sees a change upstream does not show.
    """
    for field in _OMITTED_WHEN_EMPTY:
        if field in meta and meta[field] in ({}, [], None):
            del meta[field]


def prepare_status_update(info: ResourceInfo, old_status: dict, new: dict) -> None:
    """A status write keeps what kube-apiserver's pod status strategy keeps: the immutable qosClass.

    A status without ``qosClass`` gets the stored one back (upstream backfills it for kubelets that
    drop it, pkg/registry/core/pod/strategy.go podStatusStrategy.PrepareForUpdate); a different
    value is 422 Invalid (ValidatePodStatusUpdate).
    """
    if info.name != "pods":
        return
    stored = old_status.get("qosClass")
    if not new["status"].get("qosClass") and stored:
        new["status"]["qosClass"] = stored
    check_status_update(info.name, info.kind, old_status, new)

