"""The kubelet's transport over HTTP: a node of any API server (kube-apiserver or the embedded one).

Data flow, per :class:`~dask_k8s_backend.embedded.node.transport.Transport` method:

- ``register_node``: POST the Node (metadata, spec), or on 409 merge-patch its labels and taints;
  then merge-patch ``nodes/<name>/status`` (capacity, allocatable, conditions, addresses,
  ``daemonEndpoints``, nodeInfo) and start the :class:`~.lease.NodeLease` heartbeat. After each
  renewal the Node is read: when its conditions are no longer the ones this node reports (the node
  lifecycle controller set Ready Unknown while the Lease could not be renewed, e.g. across an API
  server outage longer than its grace period), they are posted again, as a kubelet does; without
  that the node stayed NotReady and tainted unreachable for good.
- ``watch_pods``: a :class:`~.reflector.PodReflector` (LIST, then WATCH with
  ``fieldSelector=spec.nodeName``); the newest version of each pod lands in a :class:`~.reflector.PodCache`.
- ``write_status``: ``build(cached pod)``, then a merge-patch on ``pods/<name>/status`` holding only
  what changed (removed keys as null) plus ``metadata.uid``, which the API server refuses to change:
  a write never lands on a newer pod of the same name. Nothing changed, nothing sent. A write the
  server did not take (down, 5xx, 429) is kept and written again until it lands
  (:class:`~.status_retry.StatusRetrier`: bounded backoff, the latest status of a pod wins, a
  terminal phase is never left); writes of one pod are serialized so an older one never lands last.
- ``finish_deletion``: DELETE with ``gracePeriodSeconds: 0`` and ``preconditions.uid``, as the
  kubelet's status manager does; other controllers' finalizers are left alone. One the server did
  not take is retried the same way until the pod is gone (else it stayed Terminating for good).
- ``record_event``: core/v1 Events, queued and posted by one thread, dropped when the queue is full.
- ``lookup``: GET of a Secret/ConfigMap; ``delete_node``: stop the Lease, DELETE the Node.
"""

from __future__ import annotations

import datetime
import logging
import os
import queue
import threading
import time
from typing import Any, Callable

from dask_k8s_backend.kube.errors import Conflict, KubernetesApiError, NotFound
from ...podstatus import rfc3339
from ..transport import Key, Pod, PodItem, PodSink, StatusBuilder, Transport
from .http import MERGE_PATCH, RETRYABLE, ApiHttp
from .lease import NodeLease
from .reflector import PodCache, PodReflector
from .status_retry import StatusRetrier, Waiting, keep_terminal_phase, phase_of, rebase_status

logger = logging.getLogger(__name__)

EVENT_QUEUE = 1000
STATUS_LOCKS = 64  # writes of one pod are serialized; pods share these locks by hash


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
                 on_fatal: Callable[[BaseException], None] | None = None,
                 retries: StatusRetrier | None = None) -> None:
        """``retries``: where status writes that did not land wait (default: one thread, started on first use)."""
        self.http = http
        self.retries = retries or StatusRetrier(self._write_again)
        self.deletions = StatusRetrier(self._delete_again, what="deletion")
        self._status_locks = [threading.Lock() for _ in range(STATUS_LOCKS)]
        self.lease = NodeLease(http, duration=lease_duration, on_renewed=self.keep_node_ready)
        self._conditions: list[dict[str, Any]] = []  # what this node reports (type, status, reason, message)
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
        self.node_name = self.retries.name = self.deletions.name = name
        body = {"apiVersion": "v1", "kind": "Node", "metadata": node["metadata"], "spec": node["spec"]}
        try:
            created = self.http.request("POST", "/api/v1/nodes", body=body, action=f"register node {name}")
        except Conflict:
            created = self.http.request(
                "PATCH", f"/api/v1/nodes/{name}", content_type=MERGE_PATCH, action=f"take over node {name}",
                body={"metadata": {"labels": node["metadata"]["labels"]}, "spec": {"taints": node["spec"].get("taints")}})
        self.node_uid = created["metadata"]["uid"]
        self._conditions = [{k: c[k] for k in ("type", "status", "reason", "message") if k in c}
                            for c in node["status"].get("conditions") or []]
        self.http.request("PATCH", f"/api/v1/nodes/{name}/status", body={"status": node["status"]},
                          content_type=MERGE_PATCH, action=f"post the status of node {name}")
        self.lease.start(created)

    def keep_node_ready(self) -> None:
        """Post this node's conditions again if the Node no longer shows them (see the module docstring)."""
        node = self.http.request("GET", f"/api/v1/nodes/{self.node_name}", action=f"read node {self.node_name}")
        seen = {c.get("type"): c for c in (node.get("status") or {}).get("conditions") or []}
        changed = [c for c in self._conditions if (seen.get(c["type"]) or {}).get("status") != c["status"]]
        if not changed:
            return
        ready = seen.get("Ready") or {}
        stamp = rfc3339(time.time())
        conditions = [{**c, "lastHeartbeatTime": stamp, "lastTransitionTime": stamp if c in changed else
                       (seen.get(c["type"]) or {}).get("lastTransitionTime", stamp)} for c in self._conditions]
        self.http.request("PATCH", f"/api/v1/nodes/{self.node_name}/status",
                          body={"status": {"conditions": conditions}}, content_type=MERGE_PATCH,
                          action=f"post the status of node {self.node_name}")
        logger.warning("node %s: the API server showed it Ready %s (%s); its conditions are posted again",
                       self.node_name, ready.get("status", "missing"), ready.get("message") or ready.get("reason"))

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
        with self._status_lock(key):
            waiting = self.retries.cancel(key)  # this write is newer: the latest status wins
            pod = self.cache.get(key)
            if pod is None or _uid(pod) != uid:
                return None
            previous = phase_of(waiting.status if waiting is not None and waiting.uid == uid else pod.get("status"))
            status = keep_terminal_phase(previous, build(pod))
            new, landed = self._patch_status(key, uid, pod, status)
            if not landed:
                logger.info("node %s: the API server did not take the status of pod %s/%s (phase %s); writing it "
                            "again until it does", self.node_name, key[0], key[1], phase_of(status))
                self.retries.schedule(key, uid, status)
            return new

    def _write_again(self, key: Key, waiting: Waiting) -> bool:
        """The retrier's callback: write a waiting status once; True when done with it (landed, or pod gone)."""
        with self._status_lock(key):
            if self.retries.waiting(key) is not waiting:
                return True  # a newer write superseded it while it waited for this lock
            pod = self.cache.get(key)
            if pod is None or _uid(pod) != waiting.uid:
                return True
            status = rebase_status(waiting.status, pod.get("status") or {})
            _, landed = self._patch_status(key, waiting.uid, pod, status)
            if landed:
                logger.info("node %s: status of pod %s/%s (phase %s) written after %d retries", self.node_name, *key,
                            phase_of(waiting.status), waiting.attempts + 1)
            return landed

    def _status_lock(self, key: Key) -> threading.Lock:
        return self._status_locks[hash(key) % STATUS_LOCKS]

    def _patch_status(self, key: Key, uid: str, pod: Pod, status: dict[str, Any]) -> tuple[Pod | None, bool]:
        """Send what changed; (the new pod or None, False when the server did not take it and it should be retried)."""
        diff = merge_patch(pod.get("status") or {}, status)
        if not diff:
            return pod, True
        try:
            new = self.http.request("PATCH", pod_path(key) + "/status", body={"metadata": {"uid": uid}, "status": diff},
                                    content_type=MERGE_PATCH, action=f"write the status of pod {key[0]}/{key[1]}",
                                    idempotent=True)
        except (NotFound, Conflict):
            return None, True
        except RETRYABLE as e:
            logger.debug("node %s: status of pod %s/%s not written: %s", self.node_name, key[0], key[1], e)
            return None, False
        except KubernetesApiError as e:
            if not (e.code == 422 and _uid(self.cache.get(key)) != uid):  # else replaced by a pod of the same name
                logger.warning("node %s: status of pod %s/%s not written: %s", self.node_name, key[0], key[1], e)
            return None, True
        if _uid(new) != uid:
            return None, True
        self.cache.put(new)
        return new, True

    def finish_deletion(self, key: Key, uid: str) -> None:
        if not self._delete(key, uid):
            logger.info("node %s: the API server did not take the end of the deletion of pod %s/%s; sending it "
                        "again until it does", self.node_name, key[0], key[1])
            self.deletions.schedule(key, uid, {})

    def _delete_again(self, key: Key, waiting: Waiting) -> bool:
        """The deletion retrier's callback; True when done (the pod is gone, replaced, or the delete landed)."""
        pod = self.cache.get(key)
        if pod is None or _uid(pod) != waiting.uid:
            return True
        return self._delete(key, waiting.uid)

    def _delete(self, key: Key, uid: str) -> bool:
        """DELETE with grace 0 and the uid precondition; False when the server did not take it (retry)."""
        options = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
        try:
            self.http.request("DELETE", pod_path(key), body=options, action=f"finish deleting pod {key[0]}/{key[1]}",
                              idempotent=True)
        except (NotFound, Conflict):
            pass  # gone already, or a new pod of that name (the uid precondition failed)
        except RETRYABLE as e:
            logger.debug("node %s: finishing the deletion of pod %s/%s failed: %s", self.node_name, *key, e)
            return False
        except KubernetesApiError as e:
            logger.warning("node %s: finishing the deletion of pod %s/%s failed: %s", self.node_name, key[0], key[1], e)
        return True

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
        self.retries.close()
        self.deletions.close()
        self.lease.stop()
        self.http.close()
