"""Kubernetes Events recorded by the embedded kubelets and scheduler (a mixin of :class:`ObjectStore`).

Repeats of one event bump its ``count`` instead of adding an object, and only the newest
``max_events`` are kept, so a busy cluster's Events do not grow the store without bound. Apart
from the store because it is a client of the store's create and mutate, not part of them.
"""

from __future__ import annotations

import logging

from ..podstatus import rfc3339
from ..status import StatusError
from .resource_table import RESOURCES

logger = logging.getLogger(__name__)


class EventRecorder:
    """``record_event`` of :class:`~.object_store.ObjectStore` and the bound on stored Events."""

    def record_event(self, namespace: str, involved: dict, reason: str, message: str,
                     type: str = "Normal", source: str = "kubelet") -> None:
        meta = involved.get("metadata") or {}
        now = rfc3339(self._clock())
        dedup = (namespace, meta.get("uid"), meta.get("name"), reason, message, type, source)
        with self._lock:
            try:
                key = self._event_keys.get(dedup)
                if key is not None and key in self._objects["events"]:
                    def bump(event: dict) -> None:
                        event["count"] = int(event.get("count") or 1) + 1
                        event["lastTimestamp"] = now
                    self.mutate("events", key[0], key[1], bump)
                    return
                event = {
                    "metadata": {"name": f"{meta.get('name', 'object')}.{self._event_suffix()}"},
                    "involvedObject": {"kind": involved.get("kind", "Pod"), "apiVersion": involved.get("apiVersion", "v1"),
                                       "namespace": meta.get("namespace", namespace), "name": meta.get("name"),
                                       "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")},
                    "reason": reason, "message": message, "type": type,
                    "source": {"component": source}, "reportingComponent": source,
                    "firstTimestamp": now, "lastTimestamp": now, "count": 1,
                }
                created = self.create("events", namespace, event)
            except StatusError as e:
                logger.debug("Event %s about %s was not recorded: %s", reason, meta.get("name"), e.message)
                return
            key = (namespace, created["metadata"]["name"])
            self._event_keys[dedup] = key
            self._event_order.append((dedup, key))
            self._trim_events()

    def _event_suffix(self) -> str:
        # like kube's "<name>.<hex nanoseconds>": names sort in recording order
        self._last_event_ns = max(self._last_event_ns + 1, int(self._clock() * 1e9))
        return f"{self._last_event_ns:x}"

    def _trim_events(self) -> None:
        while len(self._event_order) > self._max_events:
            dedup, key = self._event_order.popleft()
            if self._event_keys.get(dedup) == key:
                del self._event_keys[dedup]
            entry = self._objects["events"].get(key)
            if entry is not None:
                self._remove_object(RESOURCES["events"], key, entry)

