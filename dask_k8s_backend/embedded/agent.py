"""What both embedded kubelets share: the Node object, the stream of this node's pods, status writes.

Data flow: :meth:`KubeletBase.start` registers the node (capacity = allocatable, labels, taints,
Ready) and subscribes to the store's pod changes with ``store.subscribe`` (atomically: the pods
that exist now, then every later change, as read-only stored objects, so nothing is copied per
kubelet). The callback runs in the writer's thread, so it only puts changes of pods bound to
this node on a queue; one dispatcher thread handles the initial pods, then the queue, in order,
and calls the subclass hooks: :meth:`pod_added` for a new pod, :meth:`pod_deleting` when a
pod gets ``deletionTimestamp``, :meth:`pod_removed` when it is gone from the store.
Subclasses write pod status with :meth:`write_status` and events with :meth:`event`; both
swallow "the pod is gone" (404), as a kubelet does when it races a deletion.
"""

from __future__ import annotations

import logging
import queue
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from . import resources as res
from .ipam import PodIPAllocator
from .podstatus import node_object
from .status import StatusError

logger = logging.getLogger(__name__)

Pod = dict[str, Any]
Key = tuple[str, str]
_STOP = object()
HOST_IP = "127.0.0.1"


def pod_key(pod: Mapping[str, Any]) -> Key:
    meta = pod.get("metadata") or {}
    return meta.get("namespace") or "default", meta.get("name", "")


def pod_uid(pod: Mapping[str, Any]) -> str:
    return (pod.get("metadata") or {}).get("uid", "")


class KubeletBase:
    """Node registration and the ordered stream of this node's pods; subclasses run the pods."""

    def __init__(self, store: Any, node_name: str, *, cpu: str = "4", memory: str = "8Gi", pods: int = 110,
                 labels: dict[str, str] | None = None, taints: list[dict] | None = None,
                 extended_resources: dict[str, Any] | None = None, ip_block: int = 0,
                 work_dir: str | Path | None = None, clock: Callable[[], float] = time.time) -> None:
        capacity = {"cpu": str(cpu), "memory": str(memory), "pods": str(int(pods)),
                    "ephemeral-storage": "100Gi", **{k: str(v) for k, v in (extended_resources or {}).items()}}
        for name, value in capacity.items():
            res.to_units(name, value, what=f"node {node_name!r} capacity {name}")  # fail now, with the name
        self.store = store
        self.node_name = node_name
        self.capacity = capacity
        self.labels = dict(labels or {})
        self.taints = list(taints or [])
        self.ip_block = ip_block
        self.ips = PodIPAllocator(ip_block)
        self.clock = clock
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix=f"kubelet-{node_name}-"))
        self._queue: queue.Queue = queue.Queue()
        self._dispatcher: threading.Thread | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._started = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Register the node, subscribe to pod changes and start the dispatcher."""
        if self._started:
            return
        self._started = True
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._register_node()
        backlog, self._unsubscribe = self.store.subscribe("pods", None, self._on_event)
        initial = [("ADDED", e.entry) for e in backlog if self._is_mine(e.entry.view)]
        self._dispatcher = threading.Thread(target=self._dispatch, args=(initial,), name=f"kubelet-{self.node_name}",
                                            daemon=True)
        self._dispatcher.start()
        logger.info("kubelet %s: node registered (%s)", self.node_name, self.capacity)

    def stop(self) -> None:
        """Stop taking pods, let the subclass stop its pods, and remove the Node; idempotent."""
        if not self._started:
            return
        self._started = False
        if self._unsubscribe is not None:
            self._guard("unsubscribing", self._unsubscribe)
            self._unsubscribe = None
        if self._dispatcher is not None:
            self._queue.put(_STOP)
            self._dispatcher.join(timeout=10)
            self._dispatcher = None
        self._guard("stopping pods", self.stop_pods)
        self._guard("deleting the node", lambda: self.store.delete("nodes", None, self.node_name))
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def _guard(self, what: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception:
            logger.warning("kubelet %s: %s failed during stop", self.node_name, what, exc_info=True)

    def _register_node(self) -> None:
        node = node_object(self.node_name, capacity=self.capacity, labels=self.labels, taints=self.taints,
                           host_ip=HOST_IP, pod_cidr=f"127.{self.ip_block}.0.0/16", now=self.clock())
        try:
            self.store.create("nodes", None, node)
        except StatusError as e:
            if e.code != 409:
                raise

            def overwrite(existing: dict[str, Any]) -> None:
                existing["metadata"]["labels"] = node["metadata"]["labels"]
                existing["spec"] = node["spec"]
                existing["status"] = node["status"]

            self.store.mutate("nodes", None, self.node_name, overwrite)

    # ------------------------------------------------------------------ pod stream
    def _is_mine(self, pod: Pod) -> bool:
        return (pod.get("spec") or {}).get("nodeName") == self.node_name

    def _on_event(self, event: Any) -> None:
        """Store callback (under the store's lock): queue this node's pod changes, nothing else."""
        if event.resource == "pods" and self._is_mine(event.entry.view):
            self._queue.put((event.type, event.entry))

    def _dispatch(self, initial: list[tuple[str, Any]]) -> None:
        """The pods that existed at subscription first, then every later change, in store order.

        The queue holds the store's entries (serialized, small); each is parsed once, here. Pods
        are read-only to the hooks: they must copy before changing anything.
        """
        pending = list(initial)
        while True:
            item = pending.pop(0) if pending else self._queue.get()
            if item is _STOP:
                return
            event_type, entry = item
            pod = entry.obj
            try:
                self._handle(event_type, pod)
            except Exception:
                logger.exception("kubelet %s: handling %s of pod %s failed", self.node_name, event_type, pod_key(pod))

    def _handle(self, event_type: str, pod: Pod) -> None:
        if event_type == "DELETED":
            self.pod_removed(pod)
            self.ips.release(pod_uid(pod))
            return
        if not self.knows(pod):
            phase = (pod.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                return  # finished before this kubelet started: nothing to run
            self.pod_added(pod)
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            self.pod_deleting(pod)

    # ------------------------------------------------------------------ hooks
    def knows(self, pod: Pod) -> bool:
        raise NotImplementedError

    def pod_added(self, pod: Pod) -> None:
        raise NotImplementedError

    def pod_deleting(self, pod: Pod) -> None:
        raise NotImplementedError

    def pod_removed(self, pod: Pod) -> None:
        raise NotImplementedError

    def stop_pods(self) -> None:
        raise NotImplementedError

    def container_log_path(self, namespace: str, pod: str, container: str, previous: bool = False) -> Path | None:
        raise NotImplementedError

    # ------------------------------------------------------------------ writes
    def write_status(self, key: Key, uid: str, build: Callable[[Pod], dict[str, Any]]) -> Pod | None:
        """Replace the pod's status with ``build(pod)``; None when the pod is gone or was replaced."""

        def update(pod: Pod) -> None:
            if pod_uid(pod) == uid:
                pod["status"] = build(pod)

        try:
            return self.store.mutate("pods", key[0], key[1], update, status_only=True)
        except StatusError as e:
            if e.code != 404:
                logger.warning("kubelet %s: status of pod %s/%s not written: %s", self.node_name, key[0], key[1], e)
            return None

    def finalize(self, key: Key) -> None:
        """The pod's containers are stopped: let the store remove it."""
        try:
            self.store.finalize_deletion("pods", key[0], key[1])
        except StatusError as e:
            if e.code != 404:
                logger.warning("kubelet %s: finalizing pod %s/%s failed: %s", self.node_name, key[0], key[1], e)

    def event(self, pod: Pod, reason: str, message: str, type_: str = "Normal") -> None:
        try:
            self.store.record_event(pod_key(pod)[0], pod, reason, message, type=type_, source="kubelet")
        except Exception:  # events are best effort, as in Kubernetes
            logger.debug("kubelet %s: event %s not recorded", self.node_name, reason, exc_info=True)
