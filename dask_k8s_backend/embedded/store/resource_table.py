"""What the embedded Kubernetes serves: one :class:`ResourceInfo` per resource, and how objects are keyed.

Discovery, OpenAPI, tables, routing and the store all read this one table, so serving a new
resource starts here. Kept apart from the store so the API layer can describe resources without
reaching into storage.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..status import StatusError


@dataclass(frozen=True)
class ResourceInfo:
    """What discovery says about one resource (core/v1 unless ``group_version`` names another group)."""

    name: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    has_status: bool = False
    group_version: str = "v1"

    @property
    def group(self) -> str:
        """The API group ("" for core), as RBAC rules and SubjectAccessReviews name it."""
        return self.group_version.rpartition("/")[0]


RESOURCES: dict[str, ResourceInfo] = {
    r.name: r
    for r in (
        ResourceInfo("pods", "Pod", True, ("po",), True),
        ResourceInfo("nodes", "Node", False, ("no",), True),
        ResourceInfo("namespaces", "Namespace", False, ("ns",), True),
        ResourceInfo("events", "Event", True, ("ev",)),
        ResourceInfo("services", "Service", True, ("svc",), True),
        ResourceInfo("secrets", "Secret", True),
        ResourceInfo("configmaps", "ConfigMap", True, ("cm",)),
        ResourceInfo("serviceaccounts", "ServiceAccount", True, ("sa",)),
        ResourceInfo("endpoints", "Endpoints", True, ("ep",)),
        ResourceInfo("persistentvolumeclaims", "PersistentVolumeClaim", True, ("pvc",), True),
        ResourceInfo("resourcequotas", "ResourceQuota", True, ("quota",), True),
        ResourceInfo("limitranges", "LimitRange", True, ("limits",)),
        ResourceInfo("leases", "Lease", True, (), False, "coordination.k8s.io/v1"),
    )
}

INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")

Key = tuple[str | None, str]  # (namespace, name)


def resource_info(resource: str) -> ResourceInfo:
    """The resource's description; 404 NotFound for resources the embedded server does not serve."""
    info = RESOURCES.get(resource)
    if info is None:
        raise StatusError(404, "NotFound", f"the server could not find the requested resource ({resource})")
    return info


def key_string(key: Key) -> str:
    """The key's place in list order, as etcd's ``<namespace>/<name>`` (cluster-scoped: ``<name>``)."""
    return key[1] if key[0] is None else f"{key[0]}/{key[1]}"

