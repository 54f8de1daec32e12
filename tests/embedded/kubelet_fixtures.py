"""Shared helpers for the scheduler and kubelet tests: a store, pod factories, bounded waits.

The tests drive the real ``ObjectStore`` (``dask_k8s_backend/embedded/store.py``). Until that
module exists in a checkout, :class:`MinimalStore` stands in: the smallest implementation of
the documented contract (docs/contracts.md) the scheduler and kubelets use.
"""

from __future__ import annotations

import copy
import itertools
import os
import threading
import time
import uuid
from typing import Any, Callable

import psutil

from dask_k8s_backend.embedded.status import StatusError, already_exists, not_found


class MinimalStore:
    """create/get/list/mutate/delete/finalize_deletion/add_listener/record_event, in memory."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._objects: dict[tuple[str, str | None, str], dict] = {}
        self._listeners: list[Callable[[str, dict], None]] = []
        self._rv = itertools.count(1)
        self.events: list[dict] = []

    def _emit(self, kind: str, obj: dict) -> None:
        for fn in list(self._listeners):
            fn(kind, copy.deepcopy(obj))

    def create(self, resource: str, namespace: str | None, obj: dict) -> dict:
        with self._lock:
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            key = (resource, namespace, meta["name"])
            if key in self._objects:
                raise already_exists(resource, meta["name"])
            if namespace is not None:
                meta["namespace"] = namespace
            meta["uid"] = str(uuid.uuid4())
            meta["resourceVersion"] = str(next(self._rv))
            obj.setdefault("kind", {"pods": "Pod", "nodes": "Node", "events": "Event"}.get(resource, resource))
            self._objects[key] = obj
            self._emit("ADDED", obj)
            return copy.deepcopy(obj)

    def get(self, resource: str, namespace: str | None, name: str) -> dict:
        with self._lock:
            try:
                return copy.deepcopy(self._objects[(resource, namespace, name)])
            except KeyError:
                raise not_found(resource, name) from None

    def list(self, resource: str, namespace: str | None = None, *, label_selector=None, field_selector=None,
             limit=None, continue_token=None):
        with self._lock:
            items = [copy.deepcopy(o) for (r, ns, _), o in self._objects.items()
                     if r == resource and (namespace is None or ns == namespace)]
        if field_selector:
            field, _, value = field_selector.partition("=")
            assert field == "spec.nodeName"
            items = [o for o in items if (o.get("spec") or {}).get("nodeName") == value]
        return items, str(next(self._rv)), None

    def mutate(self, resource, namespace, name, fn, *, status_only: bool = False) -> dict:
        with self._lock:
            obj = self.get(resource, namespace, name)
            fn(obj)
            obj["metadata"]["resourceVersion"] = str(next(self._rv))
            self._objects[(resource, namespace, name)] = obj
            self._emit("MODIFIED", obj)
            return copy.deepcopy(obj)

    def delete(self, resource, namespace, name, *, grace_period_seconds=None, propagation_policy=None) -> dict:
        with self._lock:
            obj = self.get(resource, namespace, name)
            phase = (obj.get("status") or {}).get("phase")
            if resource != "pods" or grace_period_seconds == 0 or not obj["spec"].get("nodeName") or phase in (
                    "Succeeded", "Failed"):
                del self._objects[(resource, namespace, name)]
                self._emit("DELETED", obj)
                return obj
            grace = grace_period_seconds if grace_period_seconds is not None else obj["spec"].get(
                "terminationGracePeriodSeconds", 30)

            def mark(o):
                o["metadata"].setdefault("deletionTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
                o["metadata"]["deletionGracePeriodSeconds"] = grace

            return self.mutate(resource, namespace, name, mark)

    def finalize_deletion(self, resource, namespace, name) -> None:
        with self._lock:
            obj = self.get(resource, namespace, name)
            del self._objects[(resource, namespace, name)]
            self._emit("DELETED", obj)

    def add_listener(self, fn):
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn)

    def record_event(self, namespace, involved, reason, message, type="Normal", source="kubelet") -> None:
        meta = involved.get("metadata") or {}
        with self._lock:
            self.events.append({"metadata": {"namespace": namespace}, "reason": reason, "message": message,
                                "type": type, "source": {"component": source},
                                "involvedObject": {"kind": "Pod", "name": meta.get("name"), "namespace": namespace}})


def make_store():
    """The real ObjectStore when it exists, else the minimal stand-in."""
    try:
        from dask_k8s_backend.embedded.store import ObjectStore
    except ImportError:
        return MinimalStore()
    return ObjectStore()


def store_events(store, name: str | None = None) -> list[dict]:
    """Every Event recorded (optionally only those about pod ``name``)."""
    if isinstance(store, MinimalStore):
        events = list(store.events)
    else:
        events, _, _ = store.list("events")
    return [e for e in events if name is None or (e.get("involvedObject") or {}).get("name") == name]


def pod(name: str, command: list[str] | None = None, *, image: str = "python:3.11", cpu: str | None = None,
        memory: str | None = None, memory_limit: str | None = None, env: list[dict] | None = None,
        restart_policy: str = "Never", node_selector: dict | None = None, tolerations: list | None = None,
        extended: dict | None = None, grace: int | None = None, node_name: str | None = None,
        args: list[str] | None = None) -> dict[str, Any]:
    """A pod manifest with one container ``main``."""
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if cpu:
        requests["cpu"] = cpu
    if memory:
        requests["memory"] = memory
    if memory_limit:
        limits["memory"] = memory_limit
    for key, value in (extended or {}).items():
        requests[key] = limits[key] = value
    container: dict[str, Any] = {"name": "main", "image": image, "resources": {"requests": requests, "limits": limits}}
    if command is not None:
        container["command"] = command
    if args is not None:
        container["args"] = args
    if env:
        container["env"] = env
    spec: dict[str, Any] = {"containers": [container], "restartPolicy": restart_policy}
    if node_selector:
        spec["nodeSelector"] = node_selector
    if tolerations:
        spec["tolerations"] = tolerations
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    if node_name:
        spec["nodeName"] = node_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def python(code: str) -> list[str]:
    return ["python", "-c", code]


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``condition`` (no event to await across the store) until truthy, with a deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last value {last!r})")


def get_pod(store, name: str, namespace: str = "default") -> dict | None:
    try:
        return store.get("pods", namespace, name)
    except StatusError:
        return None


def phase_of(store, name: str) -> str | None:
    p = get_pod(store, name)
    return None if p is None else (p.get("status") or {}).get("phase")


def wait_phase(store, name: str, *phases: str, timeout: float = 20.0) -> dict:
    wait_for(lambda: phase_of(store, name) in phases, timeout=timeout, what=f"pod {name} phase in {phases}")
    return get_pod(store, name)


def container_state(p: dict, index: int = 0) -> dict:
    return ((p.get("status") or {}).get("containerStatuses") or [{}])[index].get("state") or {}


def child_processes() -> list[psutil.Process]:
    return psutil.Process(os.getpid()).children(recursive=True)
