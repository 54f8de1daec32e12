"""The kubelet's transport over HTTP: a node of any API server (kube-apiserver or the embedded one).

Data flow, per :class:`~dask_k8s_backend.embedded.node.transport.Transport` method:

- ``register_node``: POST the Node (metadata, spec), or on 409 merge-patch its labels and taints;
  then merge-patch ``nodes/<name>/status`` (capacity, allocatable, conditions, addresses,
  ``daemonEndpoints``, nodeInfo) and start the :class:`~.lease.NodeLease` heartbeat.
- ``watch_pods``: a :class:`~.reflector.PodReflector` (LIST, then WATCH with
  ``fieldSelector=spec.nodeName``); the newest version of each pod lands in a :class:`~.reflector.PodCache`.
- ``write_status``: ``build(cached pod)``, then a merge-patch on ``pods/<name>/status`` holding only
  what changed (removed keys as null) plus ``metadata.uid``, which the API server refuses to change:
  a write never lands on a newer pod of the same name. Nothing changed, nothing sent.
- ``finish_deletion``: DELETE with ``gracePeriodSeconds: 0`` and ``preconditions.uid``, as the
  kubelet's status manager does; other controllers' finalizers are left alone.
- ``record_event``: core/v1 Events, queued and posted by one thread, dropped when the queue is full.
- ``lookup``: GET of a Secret/ConfigMap; ``delete_node``: stop the Lease, DELETE the Node.
"""

from __future__ import annotations

import datetime
import logging
import os
import queue
import threading
from typing import Any, Callable

from ..transport import Key, Pod, PodItem, PodSink, StatusBuilder, Transport
from dask_k8s_backend.kube.errors import Conflict, KubernetesApiError, NotFound
from .http import MERGE_PATCH, ApiHttp
from .lease import NodeLease
from .reflector import PodCache, PodReflector

logger = logging.getLogger(__name__)

EVENT_QUEUE = 1000


def merge_patch(old: Any, new: Any) -> dict[str, Any]:
    """The RFC 7386 merge patch that turns dict ``old`` into dict ``new`` (lists are replaced whole)."""
    patch: dict[str, Any] = {}
    for key in old:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        elif key not in old or before != value:
            patch[key] = value
    return patch


def _uid(pod: Pod | None) -> str:
    return ((pod or {}).get("metadata") or {}).get("uid", "")


def pod_path(key: Key) -> str:
    return f"/api/v1/namespaces/{key[0]}/pods/{key[1]}"


class ApiTransport(Transport):
    """:class:`~dask_k8s_backend.embedded.node.transport.Transport` over HTTP (see the module docstring)."""

    def __init__(self, http: ApiHttp, *, lease_duration: int = 40,
                 on_fatal: Callable[[BaseException], None] | None = None) -> None:
        self.http = http
        self.lease = NodeLease(http, duration=lease_duration)
        self.cache = PodCache()
        self.on_fatal = on_fatal
        self.node_name = ""
        self.node_uid = ""
        self._reflector: PodReflector | None = None
        self._events: queue.Queue = queue.Queue(EVENT_QUEUE)
        self._event_thread: threading.Thread | None = None
        self._event_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ApiTransport({self.http.server}, node={self.node_name!r})"

    # ------------------------------------------------------------------ node
    def register_node(self, node: dict[str, Any]) -> None:
        name = node["metadata"]["name"]
        self.node_name = name
        body = {"apiVersion": "v1", "kind": "Node", "metadata": node["metadata"], "spec": node["spec"]}
        try:
            created = self.http.request("POST", "/api/v1/nodes", body=body, action=f"register node {name}")
        except Conflict:
            created = self.http.request(
                "PATCH", f"/api/v1/nodes/{name}", content_type=MERGE_PATCH, action=f"take over node {name}",
                body={"metadata": {"labels": node["metadata"]["labels"]}, "spec": {"taints": node["spec"].get("taints")}})
        self.node_uid = created["metadata"]["uid"]
        self.http.request("PATCH", f"/api/v1/nodes/{name}/status", body={"status": node["status"]},
                          content_type=MERGE_PATCH, action=f"post the status of node {name}")
        self.lease.start(created)

    def delete_node(self, name: str) -> None:
        self.lease.stop()
        try:
            self.http.request("DELETE", f"/api/v1/nodes/{name}", action=f"delete node {name}")
        except NotFound:
            pass

    # ------------------------------------------------------------------ pods
    def watch_pods(self, node_name: str, sink: PodSink) -> list[tuple[str, PodItem]]:
        self._reflector = PodReflector(self.http, node_name, sink, cache=self.cache, on_fatal=self.on_fatal)
        backlog = self._reflector.list_pods()
        self._reflector.start()
        return backlog

    def stop_watching(self) -> None:
        if self._reflector is not None:
            self._reflector.stop()

    def get_pod(self, key: Key) -> Pod | None:
        return self.cache.get(key)

    def write_status(self, key: Key, uid: str, build: StatusBuilder) -> Pod | None:
        pod = self.cache.get(key)
        if pod is None or _uid(pod) != uid:
            return None
        diff = merge_patch(pod.get("status") or {}, build(pod))
        if not diff:
            return pod
        try:
            new = self.http.request("PATCH", pod_path(key) + "/status", body={"metadata": {"uid": uid}, "status": diff},
                                    content_type=MERGE_PATCH, action=f"write the status of pod {key[0]}/{key[1]}",
                                    idempotent=True)
        except (NotFound, Conflict):
            return None
        except KubernetesApiError as e:
            if e.code == 422 and _uid(self.cache.get(key)) != uid:
                return None  # replaced by a pod of the same name: the uid in the patch refused it
            logger.warning("node %s: status of pod %s/%s not written: %s", self.node_name, key[0], key[1], e)
            return None
        if _uid(new) != uid:
            return None
        self.cache.put(new)
        return new

    def finish_deletion(self, key: Key, uid: str) -> None:
        options = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
        try:
            self.http.request("DELETE", pod_path(key), body=options, action=f"finish deleting pod {key[0]}/{key[1]}",
                              idempotent=True)
        except (NotFound, Conflict):
            pass  # gone already, or a new pod of that name (the uid precondition failed)
        except KubernetesApiError as e:
            logger.warning("node %s: finishing the deletion of pod %s/%s failed: %s", self.node_name, key[0], key[1], e)

    def lookup(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.http.request("GET", f"/api/v1/namespaces/{namespace}/{resource}/{name}",
                                     action=f"read {resource} {namespace}/{name}")
        except NotFound:
            return None

    # ------------------------------------------------------------------ events
    def record_event(self, pod: Pod, reason: str, message: str, type_: str = "Normal") -> None:
        try:
            self._events.put_nowait(self._event(pod, reason, message, type_))
        except queue.Full:
            logger.debug("node %s: event queue full, event %s dropped", self.node_name, reason)
            return
        with self._event_lock:
            if self._event_thread is None:
                self._event_thread = threading.Thread(target=self._send_events, name=f"node-{self.node_name}-events",
                                                      daemon=True)
                self._event_thread.start()

    def _event(self, pod: Pod, reason: str, message: str, type_: str) -> dict[str, Any]:
        meta = pod.get("metadata") or {}
        now = datetime.datetime.now(datetime.timezone.utc)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta.get('name', 'pod')}.{int(now.timestamp() * 1e9):x}{os.urandom(2).hex()}",
                         "namespace": meta.get("namespace") or "default"},
            "involvedObject": {"kind": "Pod", "apiVersion": "v1", "namespace": meta.get("namespace") or "default",
                               "name": meta.get("name"), "uid": meta.get("uid"),
                               "resourceVersion": meta.get("resourceVersion")},
            "reason": reason, "message": message, "type": type_,
            "source": {"component": "kubelet", "host": self.node_name},
            "reportingComponent": "kubelet", "reportingInstance": self.node_name,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }

    def _send_events(self) -> None:
        while True:
            event = self._events.get()
            if event is None:
                return
            try:
                self.http.request("POST", f"/api/v1/namespaces/{event['metadata']['namespace']}/events", body=event,
                                  action="record an event")
            except Exception as e:  # best effort, as in Kubernetes
                logger.debug("node %s: event %s not recorded: %s", self.node_name, event["reason"], e)

    def close(self) -> None:
        with self._event_lock:
            thread, self._event_thread = self._event_thread, None
        if thread is not None:
            self._events.put(None)
            thread.join(timeout=10)
        self.lease.stop()
        self.http.close()
