"""Helpers shared by the test folders that drive KubeSparkClusters on an embedded Kubernetes.

Imported as ``from k8s_helpers import ...`` (pytest puts ``tests/`` on ``sys.path`` for its conftest).
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any, Callable

import psutil

from dask_k8s_backend import labels


def wait_until(condition: Callable[[], Any], timeout: float = 60, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll a condition that has no event to await, with a deadline; returns its truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# A skip reason starting with this says the test can run on one API server only (the embedded one or
# upstream's); tests/conftest.py lists every such skip at the end of the run.
ONE_SERVER_ONLY = "runs on the {kind} API server only: "


_ONE_SERVER_SKIP = re.compile(re.escape(ONE_SERVER_ONLY).replace(r"\{kind\}", r"\w+"))


def one_server_only_reason(kind: str, why: str) -> str:
    """The skip reason of a test that can run on ``kind`` ("embedded" or "upstream") only, and why."""
    return ONE_SERVER_ONLY.format(kind=kind) + why


def one_server_skips(reports: list[Any]) -> list[tuple[str, str]]:
    """(test id, reason) of every skipped test report whose reason says it runs on one API server only."""
    found = set()
    for report in reports:
        longrepr = getattr(report, "longrepr", None)
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else ""
        reason = reason.removeprefix("Skipped: ")
        if _ONE_SERVER_SKIP.match(reason):
            found.add((report.nodeid, reason))
    return sorted(found)


def list_pods(core_api: Any, selector: str, namespace: str = "default") -> list[dict]:
    """Pods matching a label selector, as plain dicts, read through the API."""
    response = core_api.list_namespaced_pod(namespace, label_selector=selector, _preload_content=False)
    return json.loads(response.data)["items"]


def app_pods(core_api: Any, app_id: str, namespace: str = "default") -> list[dict]:
    return list_pods(core_api, f"{labels.APP_ID}={app_id}", namespace)


def merge_kwargs(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments with config sections (dicts) merged rather than replaced."""
    merged = dict(base)
    for key, value in extra.items():
        both_dicts = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = {**merged[key], **value} if both_dicts else value
    return merged


def worker_processes() -> list[psutil.Process]:
    """``dask worker`` processes started (through the process kubelet) by this test process."""
    found = []
    for child in psutil.Process(os.getpid()).children(recursive=True):
        try:
            line = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "dask" in line and "worker" in line:
            found.append(child)
    return found


def assert_no_worker_processes_left(timeout: float = 30) -> None:
    wait_until(lambda: not worker_processes(), timeout=timeout, what="worker processes to exit")
