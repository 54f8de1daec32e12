"""One app's Lease: the object that owns its worker pods and whose renewals say the app is alive.

Data flow: the backend (:mod:`~dask_k8s_backend.backend.heartbeat`) creates the Lease with
:func:`build_lease` before its first pod and renews it with :func:`renewed`; the pod builder puts
:func:`lease_owner_reference` on every worker pod, so deleting the Lease lets Kubernetes' garbage
collector delete every pod of the app, Pending ones included. ``status`` and ``gc``
(:mod:`~dask_k8s_backend.ops.admin`) read :func:`heartbeat_age` / :func:`is_alive` to tell live apps
from dead ones without being told an app id. Pure functions only: no I/O, the time is passed in.

Owners: in client mode the Lease is the pods' only owner and their controller. In cluster mode
the scheduler pod stays the controller owner of the workers and also owns the Lease, so deleting
the scheduler pod removes the Lease and then the workers; deleting only the Lease (``gc`` of a dead
app) leaves the workers to the scheduler pod, which ``gc`` deletes too.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from .. import labels

GROUP_VERSION = "coordination.k8s.io/v1"
KIND = "Lease"
ROLE_OWNER = "owner"


def lease_name(app_id: str, app_name: str) -> str:
    """The app's Lease is named after it: ``<app name>-<app id>``."""
    return f"{app_name}-{app_id}"


def micro_time(now: float) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: Any) -> float | None:
    """Seconds since the epoch of a MicroTime/Time string (or a datetime from the official client)."""
    if isinstance(value, datetime):
        return value.timestamp()
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def build_lease(*, app_id: str, app_name: str, holder: str, duration: int, now: float,
                owner: dict[str, Any] | None = None) -> dict[str, Any]:
    """The app's Lease as first created; ``owner`` (cluster mode: the scheduler pod's reference) owns it."""
    meta: dict[str, Any] = {
        "name": lease_name(app_id, app_name),
        "labels": {labels.APP_ID: app_id, labels.APP_NAME: app_name, labels.ROLE: ROLE_OWNER},
    }
    if owner is not None:
        meta["ownerReferences"] = [dict(owner)]
    return {
        "apiVersion": GROUP_VERSION, "kind": KIND, "metadata": meta,
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": int(duration),
                 "acquireTime": micro_time(now), "renewTime": micro_time(now)},
    }


def renewed(lease: dict[str, Any], *, holder: str, duration: int, now: float) -> dict[str, Any]:
    """The Lease with a fresh renewTime (sent as a replace: the resourceVersion guards the update)."""
    spec = dict(lease.get("spec") or {})
    spec.update({"holderIdentity": holder, "leaseDurationSeconds": int(duration), "renewTime": micro_time(now)})
    return {**lease, "spec": spec}


def released(lease: dict[str, Any], *, now: float) -> dict[str, Any]:
    """The Lease of an app that closed but keeps its finished pods: no holder, so dead at once for ``gc``."""
    spec = dict(lease.get("spec") or {})
    spec.update({"holderIdentity": "", "renewTime": micro_time(now)})
    return {**lease, "spec": spec}


def lease_owner_reference(lease: dict[str, Any], *, controller: bool) -> dict[str, Any]:
    """An ownerReference to the Lease (never blocking its deletion: that needs more permissions)."""
    meta = lease["metadata"]
    return {"apiVersion": GROUP_VERSION, "kind": KIND, "name": meta["name"], "uid": meta["uid"],
            "controller": controller}


def heartbeat_age(lease: dict[str, Any], now: float) -> float | None:
    """Seconds since the last renewal, or None when the Lease was never renewed."""
    renewed_at = parse_time((lease.get("spec") or {}).get("renewTime"))
    return None if renewed_at is None else max(0.0, now - renewed_at)


def is_alive(lease: dict[str, Any], now: float) -> bool:
    """Alive while held and the last renewal is younger than the Lease's duration."""
    if not (lease.get("spec") or {}).get("holderIdentity"):
        return False  # released at close
    age = heartbeat_age(lease, now)
    duration = (lease.get("spec") or {}).get("leaseDurationSeconds") or 0
    return age is not None and age <= duration


def describe(lease: dict[str, Any] | None, now: float) -> str:
    """``alive (heartbeat 3 s ago)`` / ``dead (no heartbeat for 95 s, lease duration 30 s)`` for ``status``."""
    if lease is None:
        return "no heartbeat lease (started by an older version, or the API server serves no Leases)"
    age = heartbeat_age(lease, now)
    duration = (lease.get("spec") or {}).get("leaseDurationSeconds") or 0
    if age is None:
        return "dead (its lease was never renewed)"
    if not (lease.get("spec") or {}).get("holderIdentity"):
        return f"closed {age:.0f} s ago (its kept pods wait for `gc`)"
    if is_alive(lease, now):
        return f"alive (heartbeat {age:.0f} s ago)"
    return f"dead (no heartbeat for {age:.0f} s, lease duration {duration} s)"
