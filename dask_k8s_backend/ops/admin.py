"""Operator commands: ``status`` (apps and their pods) and ``gc`` (delete what dead apps left:
their pods, and the Secrets labelled with their app id, such as a TLS app's certificates).

Every pod the project creates carries the app-id label (``labels.py``), so both commands work
from labels alone, against any API server the master URL names, without any app running.
Every app also has a heartbeat: a Lease (:mod:`~dask_k8s_backend.kube.app_lease`) its backend renews and
that owns its worker pods. ``status`` shows each app alive or dead from it; ``gc`` without an app id
deletes the Leases of dead apps (Kubernetes' garbage collector then deletes what they own) and their
pods and Secrets; apps without a Lease (older versions) are collected when all their pods finished.
An app whose heartbeat is alive is only touched when named with ``--app``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

from .. import labels
from ..config import load_settings
from ..kube import app_lease
from ..kube.master import resolve_manager

logger = logging.getLogger(__name__)

FINISHED = ("Succeeded", "Failed")


@dataclass(frozen=True)
class AppPods:
    """The pods of one app, grouped for display and garbage collection."""

    app_id: str
    app_name: str
    namespace: str
    pods: tuple[dict[str, Any], ...]
    lease: dict[str, Any] | None = None

    def is_dead(self, now: float) -> bool:
        """Its heartbeat expired (an app without a Lease is never called dead from it)."""
        return self.lease is not None and not app_lease.is_alive(self.lease, now)

    def phases(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for pod in self.pods:
            counts[pod.get("status", {}).get("phase", "Unknown")] += 1
        return dict(sorted(counts.items()))

    @property
    def all_finished(self) -> bool:
        return all(p.get("status", {}).get("phase") in FINISHED for p in self.pods)


def list_project_pods(api_client: Any, namespace: str | None) -> list[dict[str, Any]]:
    """Every pod with the project's app-id label (in one namespace, or all when None)."""
    from kubernetes import client as k8s

    core = k8s.CoreV1Api(api_client)
    if namespace:
        response = core.list_namespaced_pod(namespace, label_selector=labels.APP_ID, _preload_content=False)
    else:
        response = core.list_pod_for_all_namespaces(label_selector=labels.APP_ID, _preload_content=False)
    return json.loads(response.data)["items"]


def list_app_leases(api_client: Any, namespace: str | None) -> list[dict[str, Any]]:
    """Every app's heartbeat Lease (none when the server serves no Leases or they may not be listed)."""
    from kubernetes import client as k8s

    coordination = k8s.CoordinationV1Api(api_client)
    selector = f"{labels.APP_ID},{labels.ROLE}={app_lease.ROLE_OWNER}"
    try:
        if namespace:
            response = coordination.list_namespaced_lease(namespace, label_selector=selector, _preload_content=False)
        else:
            response = coordination.list_lease_for_all_namespaces(label_selector=selector, _preload_content=False)
    except k8s.ApiException as e:
        if e.status in (403, 404):
            logger.warning("cannot list heartbeat leases (%s %s): apps are judged by their pods only", e.status, e.reason)
            return []
        raise
    return json.loads(response.data)["items"]


def group_by_app(pods: list[dict[str, Any]], leases: list[dict[str, Any]] = ()) -> list[AppPods]:  # type: ignore[assignment]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    owners: dict[tuple[str, str], dict[str, Any]] = {}
    for pod in pods:
        meta = pod["metadata"]
        groups[(meta["namespace"], meta["labels"][labels.APP_ID])].append(pod)
    for lease in leases:
        meta = lease["metadata"]
        key = (meta["namespace"], meta["labels"][labels.APP_ID])
        owners[key] = lease
        groups.setdefault(key, [])
    return [
        AppPods(
            app_id=app_id,
            app_name=_app_name(pods_, owners.get((namespace, app_id))),
            namespace=namespace,
            pods=tuple(sorted(pods_, key=lambda p: p["metadata"]["name"])),
            lease=owners.get((namespace, app_id)),
        )
        for (namespace, app_id), pods_ in sorted(groups.items())
    ]


def _app_name(pods: list[dict[str, Any]], lease: dict[str, Any] | None) -> str:
    for obj in pods[:1] + ([lease] if lease else []):
        return obj["metadata"]["labels"].get(labels.APP_NAME, "")
    return ""


def format_apps(apps: list[AppPods], now: float | None = None) -> str:
    if not apps:
        return "no dask-k8s-backend pods found"
    now = time.time() if now is None else now
    lines = []
    for app in apps:
        lines.append(f"app {app.app_id} ({app.app_name or '-'}) namespace {app.namespace}: {app.phases()}, "
                     f"{app_lease.describe(app.lease, now)}")
        for pod in app.pods:
            meta, status = pod["metadata"], pod.get("status", {})
            role = meta["labels"].get(labels.ROLE, "?")
            lines.append(f"  {meta['name']:<50} {role:<9} {status.get('phase', 'Unknown'):<10} {status.get('podIP') or '-'}")
    return "\n".join(lines)


def select_dead_apps(apps: list[AppPods], app_id: str | None, now: float) -> list[AppPods]:
    """The named app; else apps whose heartbeat expired, and apps without one whose pods all finished."""
    if app_id:
        return [a for a in apps if a.app_id == app_id]
    return [a for a in apps if a.is_dead(now) or (a.lease is None and a.pods and a.all_finished)]


def select_garbage(apps: list[AppPods], app_id: str | None, now: float | None = None) -> list[dict[str, Any]]:
    """Pods to delete: every pod of the dead apps (:func:`select_dead_apps`)."""
    now = time.time() if now is None else now
    return [p for a in select_dead_apps(apps, app_id, now) for p in a.pods]


def collect_garbage(
    api_client: Any, namespace: str | None, app_id: str | None, dry_run: bool, say: Callable[[str], None] = print
) -> int:
    """Delete (or, with dry_run, list) what dead apps left behind; returns the number of pods."""
    from kubernetes import client as k8s

    apps = group_by_app(list_project_pods(api_client, namespace), list_app_leases(api_client, namespace))
    dead = select_dead_apps(apps, app_id, time.time())
    garbage = [p for a in dead for p in a.pods]
    _collect_leases(api_client, [a.lease for a in dead if a.lease is not None], dry_run, say)
    core = k8s.CoreV1Api(api_client)
    for pod in garbage:
        meta = pod["metadata"]
        say(f"{'would delete' if dry_run else 'deleting'} pod {meta['namespace']}/{meta['name']}")
        if not dry_run:
            try:
                core.delete_namespaced_pod(meta["name"], meta["namespace"], grace_period_seconds=0)
            except k8s.ApiException as e:
                if e.status != 404:
                    raise
    say(f"{len(garbage)} pod(s) {'to delete' if dry_run else 'deleted'}")
    dead_apps = {a.app_id for a in dead} | ({app_id} if app_id else set())
    _collect_secrets(core, namespace, dead_apps, dry_run, say)
    return len(garbage)


def _collect_leases(api_client: Any, leases: list[dict[str, Any]], dry_run: bool, say: Callable[[str], None]) -> None:
    """Dead apps' Leases: their deletion lets Kubernetes' garbage collector delete everything they own."""
    from kubernetes import client as k8s

    coordination = k8s.CoordinationV1Api(api_client)
    for lease in leases:
        meta = lease["metadata"]
        say(f"{'would delete' if dry_run else 'deleting'} lease {meta['namespace']}/{meta['name']} "
            f"({app_lease.describe(lease, time.time())})")
        if not dry_run:
            try:
                coordination.delete_namespaced_lease(meta["name"], meta["namespace"])
            except k8s.ApiException as e:
                if e.status != 404:
                    raise


def _collect_secrets(core: Any, namespace: str | None, app_ids: set[str], dry_run: bool,
                     say: Callable[[str], None]) -> None:
    """Secrets of the dead apps (a TLS app's "dask-tls-<app id>"); a live app's are never touched."""
    from kubernetes import client as k8s

    if not app_ids:
        return
    if namespace:
        response = core.list_namespaced_secret(namespace, label_selector=labels.APP_ID, _preload_content=False)
    else:
        response = core.list_secret_for_all_namespaces(label_selector=labels.APP_ID, _preload_content=False)
    for secret in json.loads(response.data)["items"]:
        meta = secret["metadata"]
        if meta["labels"].get(labels.APP_ID) not in app_ids:
            continue
        say(f"{'would delete' if dry_run else 'deleting'} secret {meta['namespace']}/{meta['name']}")
        if not dry_run:
            try:
                core.delete_namespaced_secret(meta["name"], meta["namespace"])
            except k8s.ApiException as e:
                if e.status != 404:
                    raise


def connect(master: str) -> Any:
    """A connection for operator commands (never starts an embedded Kubernetes by surprise)."""
    if master.startswith("embedded://"):
        raise ValueError(
            f"--master {master!r}: status and gc look at an existing cluster; an embedded Kubernetes "
            "started just for them would be empty. Use k8s:// (kubeconfig) or k8s://https://host:port"
        )
    settings = load_settings({"master": master})
    return resolve_manager(master).connect(master, settings)


def run_status(master: str, namespace: str | None, say: Callable[[str], None] = print) -> int:
    connection = connect(master)
    try:
        api_client = connection.api_client
        say(format_apps(group_by_app(list_project_pods(api_client, namespace), list_app_leases(api_client, namespace))))
    finally:
        connection.close()
    return 0


def run_gc(master: str, namespace: str | None, app_id: str | None, dry_run: bool, say: Callable[[str], None] = print) -> int:
    connection = connect(master)
    try:
        collect_garbage(connection.api_client, namespace, app_id, dry_run, say)
    finally:
        connection.close()
    return 0
