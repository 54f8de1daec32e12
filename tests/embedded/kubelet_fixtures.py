"""Shared helpers for the scheduler and kubelet tests: a store, pod factories, bounded waits.

The tests drive the real ``ObjectStore`` (``dask_k8s_backend/embedded/store/object_store.py``): no fakes.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import psutil

from dask_k8s_backend.embedded.status import StatusError
from dask_k8s_backend.embedded.store.object_store import ObjectStore


def make_store():
    return ObjectStore()


def store_events(store, name: str | None = None) -> list[dict]:
    """Every Event recorded (optionally only those about pod ``name``)."""
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
