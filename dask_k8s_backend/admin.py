"""Operator commands: ``status`` (apps and their pods) and ``gc`` (delete what dead apps left:
their pods, and the Secrets labelled with their app id, such as a TLS app's certificates).

Every pod the project creates carries the app-id label (``labels.py``), so both commands work
from labels alone, against any API server the master URL names, without any app running.
An app is "dead" when its scheduler is gone: in client mode nothing in the cluster says so,
so ``gc`` deletes by app id when asked for one, and otherwise only pods that have finished
(Succeeded/Failed) or whose app has no pod still running.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

from . import labels

logger = logging.getLogger(__name__)

FINISHED = ("Succeeded", "Failed")


@dataclass(frozen=True)
class AppPods:
    """The pods of one app, grouped for display and garbage collection."""

    app_id: str
    app_name: str
    namespace: str
    pods: tuple[dict[str, Any], ...]

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


def group_by_app(pods: list[dict[str, Any]]) -> list[AppPods]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for pod in pods:
        meta = pod["metadata"]
        groups[(meta["namespace"], meta["labels"][labels.APP_ID])].append(pod)
    return [
        AppPods(
            app_id=app_id,
            app_name=pods_[0]["metadata"]["labels"].get(labels.APP_NAME, ""),
            namespace=namespace,
            pods=tuple(sorted(pods_, key=lambda p: p["metadata"]["name"])),
        )
        for (namespace, app_id), pods_ in sorted(groups.items())
    ]


def format_apps(apps: list[AppPods]) -> str:
    if not apps:
        return "no dask-k8s-backend pods found"
    lines = []
    for app in apps:
        lines.append(f"app {app.app_id} ({app.app_name or '-'}) namespace {app.namespace}: {app.phases()}")
        for pod in app.pods:
            meta, status = pod["metadata"], pod.get("status", {})
            role = meta["labels"].get(labels.ROLE, "?")
            lines.append(f"  {meta['name']:<50} {role:<9} {status.get('phase', 'Unknown'):<10} {status.get('podIP') or '-'}")
    return "\n".join(lines)


def select_garbage(apps: list[AppPods], app_id: str | None) -> list[dict[str, Any]]:
    """Pods to delete: all pods of the named app, else every pod of apps whose pods all finished."""
    if app_id:
        return [p for a in apps if a.app_id == app_id for p in a.pods]
    return [p for a in apps if a.all_finished for p in a.pods]


def collect_garbage(
    api_client: Any, namespace: str | None, app_id: str | None, dry_run: bool, say: Callable[[str], None] = print
) -> int:
    """Delete (or, with dry_run, list) what dead apps left behind; returns the number of pods."""
    from kubernetes import client as k8s

    garbage = select_garbage(group_by_app(list_project_pods(api_client, namespace)), app_id)
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
    dead_apps = {p["metadata"]["labels"][labels.APP_ID] for p in garbage} | ({app_id} if app_id else set())
    _collect_secrets(core, namespace, dead_apps, dry_run, say)
    return len(garbage)


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
    from .config import load_settings
    from .master import resolve_manager

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
        say(format_apps(group_by_app(list_project_pods(connection.api_client, namespace))))
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
