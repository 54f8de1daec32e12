"""Helpers of the node agent tests: the test's own API client (watch-based waits) and pod manifests."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Callable

from dask_k8s_backend.kube.errors import NotFound
from dask_k8s_backend.embedded.node.agent.http import ApiHttp

Pod = dict[str, Any]
NAMESPACE = "default"


class Api:
    """The test's own client of the API server (the same HTTP layer the agent uses)."""

    def __init__(self, kubeconfig: str, upstream: bool) -> None:
        self.kubeconfig = kubeconfig
        self.upstream = upstream
        self.http = ApiHttp(kubeconfig)

    def pod_path(self, name: str) -> str:
        return f"/api/v1/namespaces/{NAMESPACE}/pods/{name}"

    def create_pod(self, manifest: Pod) -> Pod:
        return self.http.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", body=manifest)

    def get(self, path: str) -> dict | None:
        try:
            return self.http.request("GET", path)
        except NotFound:
            return None

    def delete_pod(self, name: str, grace: int | None = None) -> None:
        body = {"gracePeriodSeconds": grace} if grace is not None else None
        try:
            self.http.request("DELETE", self.pod_path(name), body=body)
        except NotFound:
            pass

    def wait_for(self, collection: str, name: str, check: Callable[[dict | None], Any], timeout: float = 60.0,
                 what: str = "condition", selector: str | None = None) -> Any:
        """Watch ``collection`` (an API path) for object ``name`` until ``check(obj or None if deleted)`` is truthy.

        ``selector`` replaces the ``metadata.name`` field selector (then ``check`` sees any matching object).
        """
        deadline = time.monotonic() + timeout
        seen: list[Any] = []
        selector = selector or f"metadata.name={name}"
        while time.monotonic() < deadline:
            answer = self.http.request("GET", collection, query={"fieldSelector": selector})
            items = answer.get("items") or []
            result = next(filter(None, map(check, items)), None) if items else check(None)
            if result:
                return result
            rv = answer["metadata"]["resourceVersion"]
            remaining = max(1, int(deadline - time.monotonic()))
            stream = self.http.stream(collection, query={"watch": True, "fieldSelector": selector,
                                                         "resourceVersion": rv, "timeoutSeconds": remaining},
                                      read_timeout=remaining + 5)
            try:
                for line in stream:
                    event = json.loads(line)
                    if event["type"] == "ERROR":
                        break  # expired: list again
                    obj = None if event["type"] == "DELETED" else event["object"]
                    seen.append(obj)
                    result = check(obj)
                    if result:
                        return result
            finally:
                stream.close()
        raise AssertionError(f"timed out after {timeout} s waiting for {what} of {name}; last seen {seen[-1:]!r}")

    def wait_pod(self, name: str, check: Callable[[Pod | None], Any], timeout: float = 60.0, what: str = "pod") -> Any:
        return self.wait_for(f"/api/v1/namespaces/{NAMESPACE}/pods", name, check, timeout, what)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def python_pod(name: str, node: str, code: str, *, grace: int | None = None, restart: str = "Never") -> Pod:
    spec: dict[str, Any] = {"nodeName": node, "restartPolicy": restart,
                            "containers": [{"name": "main", "image": "python:3.11", "command": ["python", "-c", code]}]}
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}


def phase(pod: Pod | None) -> str | None:
    return ((pod or {}).get("status") or {}).get("phase")


def terminated(pod: Pod | None) -> dict | None:
    for status in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        state = (status.get("state") or {}).get("terminated")
        if state:
            return state
    return None
