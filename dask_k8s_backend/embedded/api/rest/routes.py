"""Which resource a URL names: kube-apiserver's paths as a :class:`Route`, and upstream's 404 for the rest.

Apart from the handler because the path grammar (core ``/api/v1``, served groups under ``/apis``,
``watch/``, namespaces, subresources) is a contract of its own, read by the handler and by the
APF classification of health probes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ...status import StatusError
from ...store.resource_table import RESOURCES, ResourceInfo

logger = logging.getLogger(__name__)

#: the health probes: served without a token, exempt from flow control
PUBLIC_PATHS = ("/healthz", "/livez", "/readyz")


@dataclass(frozen=True)
class Route:
    """What a resource URL names: ``GET /api/v1/namespaces/ns/pods/p/log`` -> pods, ns, p, log."""

    info: ResourceInfo
    namespace: str | None
    name: str | None = None
    sub: str | None = None
    watch_path: bool = False


def not_found_path(path: str) -> StatusError:
    """Upstream's answer for a path it does not serve (the same words and empty details, whatever the path)."""
    logger.debug("No such API path: %s", path)
    return StatusError(404, "NotFound", "the server could not find the requested resource", {})


GROUP_PATHS = {f"/apis/{info.group_version}/": info.group_version for info in RESOURCES.values() if info.group}


def is_resource_path(path: str) -> bool:
    """``/api/v1/...`` or ``/apis/<group>/<version>/...`` of a group whose resources are served."""
    return path.startswith("/api/v1/") or any(path.startswith(prefix) for prefix in GROUP_PATHS)


def parse_path(path: str) -> Route:
    """A ``/api/v1/...`` (or served group's) path as a :class:`Route`; 404 for paths kube-apiserver would not serve."""
    group_version = next((gv for prefix, gv in GROUP_PATHS.items() if path.startswith(prefix)), "v1")
    parts = [p for p in path.split("/") if p][2 if group_version == "v1" else 3:]
    served = {name: info for name, info in RESOURCES.items() if info.group_version == group_version}
    watch = bool(parts) and parts[0] == "watch"
    if watch:
        parts = parts[1:]
    if not parts:
        raise not_found_path(path)
    if parts[0] == "namespaces" and len(parts) >= 3 and parts[2] in served:
        namespace, rest = parts[1], parts[2:]
        if not served[rest[0]].namespaced:
            raise not_found_path(path)
    else:
        namespace, rest = None, parts
    if rest[0] not in served or len(rest) > 3:
        raise not_found_path(path)
    info = served[rest[0]]
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if name and info.namespaced and namespace is None:
        raise not_found_path(path)
    if sub not in (None, "status", "log", "binding", "finalize") or (sub == "log" and info.name != "pods"):
        raise not_found_path(path)
    return Route(info, namespace, name, sub, watch)
