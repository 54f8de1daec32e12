"""The in-process transport: a kubelet of the embedded Kubernetes talking straight to its ObjectStore.

Data flow: ``store.subscribe("pods")`` gives, atomically, the pods that exist now and then every
later change as read-only stored entries (nothing is copied per kubelet). The store calls
:meth:`StoreTransport._on_event` in the writer's thread, under its lock, so it only filters by
``spec.nodeName`` and hands the entry on; the kubelet's dispatcher parses it. Status writes are
``store.mutate(..., status_only=True)`` guarded by the pod's uid, graceful deletions end with
``store.finalize_deletion`` and events go through ``store.record_event`` (deduplicated there).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from ..status import StatusError
from .transport import Key, Pod, PodItem, PodSink, StatusBuilder, Transport

logger = logging.getLogger(__name__)


def _uid(pod: Pod) -> str:
    return (pod.get("metadata") or {}).get("uid", "")


class StoreTransport(Transport):
    """:class:`~.transport.Transport` over an :class:`~.store.ObjectStore` (see the module docstring)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._node_name: str | None = None
        self._sink: PodSink | None = None
        self._unsubscribe: Callable[[], None] | None = None

    def register_node(self, node: dict[str, Any]) -> None:
        try:
            self.store.create("nodes", None, node)
        except StatusError as e:
            if e.code != 409:
                raise

            def overwrite(existing: dict[str, Any]) -> None:
                existing["metadata"]["labels"] = node["metadata"]["labels"]
                existing["spec"] = node["spec"]
                existing["status"] = node["status"]

            self.store.mutate("nodes", None, node["metadata"]["name"], overwrite)

    def watch_pods(self, node_name: str, sink: PodSink) -> list[tuple[str, PodItem]]:
        self._node_name, self._sink = node_name, sink
        backlog, self._unsubscribe = self.store.subscribe("pods", None, self._on_event)
        return [("ADDED", e.entry) for e in backlog if self._is_mine(e.entry.view)]

    def _is_mine(self, pod: Pod) -> bool:
        return (pod.get("spec") or {}).get("nodeName") == self._node_name

    def _on_event(self, event: Any) -> None:
        """Store callback (under the store's lock): pass on this node's pod changes, nothing else."""
        sink = self._sink
        if sink is not None and event.resource == "pods" and self._is_mine(event.entry.view):
            sink(event.type, event.entry)

    def stop_watching(self) -> None:
        self._sink = None
        if self._unsubscribe is not None:
            unsubscribe, self._unsubscribe = self._unsubscribe, None
            unsubscribe()

    def write_status(self, key: Key, uid: str, build: StatusBuilder) -> Pod | None:
        def update(pod: Pod) -> None:
            if _uid(pod) == uid:
                pod["status"] = build(pod)

        try:
            pod = self.store.mutate("pods", key[0], key[1], update, status_only=True)
        except StatusError as e:
            if e.code != 404:
                logger.warning("status of pod %s/%s not written: %s", key[0], key[1], e)
            return None
        return pod if _uid(pod) == uid else None

    def finish_deletion(self, key: Key, uid: str) -> None:
        try:
            if _uid(self.store.get("pods", key[0], key[1])) != uid:
                return  # replaced by a pod of the same name: not ours to finish
            self.store.finalize_deletion("pods", key[0], key[1])
        except StatusError as e:
            if e.code != 404:
                logger.warning("finalizing pod %s/%s failed: %s", key[0], key[1], e)

    def record_event(self, pod: Pod, reason: str, message: str, type_: str = "Normal") -> None:
        try:
            namespace = (pod.get("metadata") or {}).get("namespace") or "default"
            self.store.record_event(namespace, pod, reason, message, type=type_, source="kubelet")
        except Exception:  # events are best effort, as in Kubernetes
            logger.debug("event %s not recorded", reason, exc_info=True)

    def lookup(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.store.get(resource, namespace, name)
        except StatusError as e:
            if e.code == 404:
                return None
            raise

    def get_pod(self, key: Key) -> Pod | None:
        return self.lookup("pods", key[0], key[1])

    def delete_node(self, name: str) -> None:
        try:
            self.store.delete("nodes", None, name)
        except StatusError as e:
            if e.code != 404:
                raise
