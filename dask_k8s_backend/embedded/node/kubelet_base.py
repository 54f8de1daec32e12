"""What both kubelets share: the Node object, the stream of this node's pods, status writes.

Data flow: :meth:`KubeletBase.start` registers the node (capacity = allocatable, labels, taints,
Ready) and opens the stream of the pods bound to it, both through a
:class:`~.transport.Transport`: the embedded Kubernetes passes its ObjectStore (wrapped in a
:class:`~.store_transport.StoreTransport`), the node agent an HTTP transport to any API server.
The transport's callback only puts changes on a queue; one dispatcher thread handles the
backlog, then the queue, in order, and calls the subclass hooks: :meth:`pod_added` for a new
pod, :meth:`pod_deleting` when a pod gets ``deletionTimestamp``, :meth:`pod_removed` when it is
gone. Subclasses write pod status with :meth:`write_status` and events with :meth:`event`; both
swallow "the pod is gone", as a kubelet does when it races a deletion.
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

from dask_k8s_backend.kube import resources as res
from ..podstatus import node_object
from .ipam import PodIPAllocator
from .store_transport import StoreTransport
from .transport import PodItem, Transport

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
                 work_dir: str | Path | None = None, clock: Callable[[], float] = time.time,
                 hostname: str | None = None, kubelet_port: int = 10250) -> None:
        """``store`` is a :class:`~.transport.Transport`, or an ObjectStore (wrapped in a StoreTransport).

        ``hostname`` is the node's Hostname address (default: its name) and ``kubelet_port`` the port
        its kubelet endpoint is announced on; the node agent sets both so an API server can reach it.
        """
        capacity = {"cpu": str(cpu), "memory": str(memory), "pods": str(int(pods)),
                    "ephemeral-storage": "100Gi", **{k: str(v) for k, v in (extended_resources or {}).items()}}
        for name, value in capacity.items():
            res.to_units(name, value, what=f"node {node_name!r} capacity {name}")  # fail now, with the name
        self.transport: Transport = store if isinstance(store, Transport) else StoreTransport(store)
        self.node_name = node_name
        self.capacity = capacity
        self.labels = dict(labels or {})
        self.taints = list(taints or [])
        self.ip_block = ip_block
        self.ips = PodIPAllocator(ip_block)
        self.clock = clock
        self.hostname = hostname or node_name
        self.kubelet_port = kubelet_port
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix=f"kubelet-{node_name}-"))
        self._queue: queue.Queue = queue.Queue()
        self._dispatcher: threading.Thread | None = None
        self._started = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Register the node, subscribe to pod changes and start the dispatcher."""
        if self._started:
            return
        self._started = True
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._register_node()
        initial = self.transport.watch_pods(self.node_name, self._on_event)
        self._dispatcher = threading.Thread(target=self._dispatch, args=(initial,), name=f"kubelet-{self.node_name}",
                                            daemon=True)
        self._dispatcher.start()
        logger.info("kubelet %s: node registered (%s)", self.node_name, self.capacity)

    def stop(self, graceful: bool = False) -> None:
        """Stop taking pods, let the subclass stop its pods, and remove the Node; idempotent.

        ``graceful``: each pod gets SIGTERM and its grace period before SIGKILL, and its final
        status is written (a node agent leaving); otherwise pods are killed at once (tests, the
        embedded Kubernetes shutting down as a whole).
        """
        if not self._started:
            return
        self._started = False
        self._guard("closing the pod stream", self.transport.stop_watching)
        if self._dispatcher is not None:
            self._queue.put(_STOP)
            self._dispatcher.join(timeout=10)
            self._dispatcher = None
        self._guard("stopping pods", lambda: self.stop_pods(graceful=graceful))
        self._guard("deleting the node", lambda: self.transport.delete_node(self.node_name))
        self._guard("closing the transport", self.transport.close)
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def _guard(self, what: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception:
            logger.warning("kubelet %s: %s failed during stop", self.node_name, what, exc_info=True)

    def _register_node(self) -> None:
        node = node_object(self.node_name, capacity=self.capacity, labels=self.labels, taints=self.taints,
                           host_ip=HOST_IP, pod_cidr=f"127.{self.ip_block}.0.0/16", now=self.clock(),
                           hostname=self.hostname, kubelet_port=self.kubelet_port)
        self.transport.register_node(node)

    # ------------------------------------------------------------------ pod stream
    def _on_event(self, event_type: str, item: PodItem) -> None:
        """Transport callback (possibly under the store's lock): queue the change, nothing else."""
        self._queue.put((event_type, item))

    def _dispatch(self, initial: list[tuple[str, PodItem]]) -> None:
        """The pods that existed when the stream opened first, then every later change, in order.

        The queue holds the transport's items (the store's serialized entries); each is parsed
        once, here. Pods are read-only to the hooks: they must copy before changing anything.
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

    def stop_pods(self, graceful: bool = False) -> None:
        raise NotImplementedError

    def container_log_path(self, namespace: str, pod: str, container: str, previous: bool = False) -> Path | None:
        raise NotImplementedError

    # ------------------------------------------------------------------ writes
    def write_status(self, key: Key, uid: str, build: Callable[[Pod], dict[str, Any]]) -> Pod | None:
        """Replace the pod's status with ``build(pod)``; None when the pod is gone or was replaced."""
        return self.transport.write_status(key, uid, build)

    def finalize(self, key: Key, uid: str) -> None:
        """The pod's containers are stopped: let the API server remove it."""
        self.transport.finish_deletion(key, uid)

    def event(self, pod: Pod, reason: str, message: str, type_: str = "Normal") -> None:
        self.transport.record_event(pod, reason, message, type_)

    def lookup(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A Secret or ConfigMap for a container's env, None when it does not exist."""
        return self.transport.lookup(resource, namespace, name)
