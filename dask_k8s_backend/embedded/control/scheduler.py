"""The embedded kube-scheduler: binds pods that have no ``spec.nodeName`` to a node that fits.

Data flow: a ``store.subscribe`` callback records the newest version of every changed pod and
node and queues its key once (it never blocks the writer, and gets the store's read-only objects,
so nothing is copied). Like client-go's DeltaFIFO it compresses: a pod changed five times while the
scheduler was busy is handled once, at its newest version, so a burst of 10,000 pods holds one
reference per pod instead of one superseded copy per change. One thread
first takes the pods and nodes that existed at subscription, then drains the queue in batches,
keeps a cache of nodes, of the resources bound pods use on each node and of pending pods, and then tries the *active* pending pods in priority
then arrival order. A pod that fits is bound with ``store.mutate`` (``spec.nodeName`` and
``PodScheduled=True``, a ``Scheduled`` event); one that does not gets ``PodScheduled=False``,
reason ``Unschedulable``, the kube-scheduler's message and a ``FailedScheduling`` warning, and
waits in the *unschedulable* set until capacity frees up (a bound pod finishes or is deleted,
a node is added or changed) or a periodic flush, like the real scheduler's queues.

The rules (filters, messages, scoring) are pure functions in :mod:`.predicates`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..status import StatusError
from dask_k8s_backend.kube import resources as res
from ..podstatus import condition, get_condition, set_condition
from .predicates import NodeInfo, PodInfo, filter_node, fit_error_message, score

logger = logging.getLogger(__name__)

Key = tuple[str, str]
_FINISHED = ("Succeeded", "Failed")
_STOP = object()


def pod_key(pod: dict[str, Any]) -> Key:
    meta = pod.get("metadata") or {}
    return meta.get("namespace") or "default", meta.get("name", "")


@dataclass
class _Pending:
    info: PodInfo
    seq: int
    message: str | None = None  # last Unschedulable message written (skip identical writes)
    error: str | None = None  # a request that is not a quantity


class EmbeddedScheduler:
    """Binds pending pods to nodes honouring requests vs allocatable, nodeSelector/affinity and taints."""

    def __init__(self, store: Any, *, record_events: bool = True, flush_interval: float = 30.0,
                 name: str = "default-scheduler", clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._record_events = record_events
        self._flush_interval = flush_interval
        self._name = name
        self._clock = clock
        self._queue: queue.Queue = queue.Queue()
        self._newest: dict[tuple[str, Key], tuple[str, Any]] = {}  # queued key -> (type, newest store entry)
        self._newest_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._nodes: dict[str, NodeInfo] = {}
        self._used: dict[str, res.Resources] = {}
        self._bound: dict[Key, tuple[str, res.Resources, str]] = {}  # key -> node, requests, uid
        self._pending: dict[Key, _Pending] = {}
        self._active: set[Key] = set()
        self._seq = 0
        self._versions: dict[tuple[str, Key], int] = {}  # newest resourceVersion seen, to drop stale events
        self._idle = threading.Event()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Subscribe, load the current pods and nodes, and start the scheduling thread."""
        if self._thread is not None:
            return
        backlog, self._unsubscribe = self._store.subscribe("pods", None, self._on_event)
        nodes = self._store.list_entries("nodes")[0]  # after subscribing: newer events are dropped as stale
        initial = [("ADDED", "nodes", e) for e in nodes] + [("ADDED", "pods", e.entry) for e in backlog]
        self._thread = threading.Thread(target=self._run, args=(initial,), name="embedded-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Unsubscribe and join the thread; idempotent."""
        if self._unsubscribe is not None:
            try:
                self._unsubscribe()
            except Exception:  # best effort: the store may be closing too
                logger.debug("embedded scheduler: unsubscribing failed", exc_info=True)
            self._unsubscribe = None
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout=10)
            self._thread = None

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """True once every queued change has been handled (for tests and the facade)."""
        self._idle.clear()
        self._queue.put(("SYNC", None, None))
        return self._idle.wait(timeout)

    def _on_event(self, event: Any) -> None:
        """Store callback (under the store's lock): remember the newest change, queue its key once."""
        if event.resource not in ("pods", "nodes"):
            return
        slot = (event.resource, pod_key(event.entry.view))  # the view holds the metadata: nothing is parsed
        with self._newest_lock:
            queued = slot in self._newest
            self._newest[slot] = (event.type, event.entry)
        if not queued:
            self._queue.put(("CHANGED", slot, None))

    def _take_newest(self, slot: tuple[str, Key]) -> tuple[str, Any] | None:
        with self._newest_lock:
            return self._newest.pop(slot, None)

    # ------------------------------------------------------------------ loop
    def _run(self, initial: list[tuple[str, str, Any]]) -> None:
        last_flush = time.monotonic()
        batch: list[Any] = list(initial)
        while True:
            if not batch:
                try:
                    batch.append(self._queue.get(timeout=self._flush_interval))
                except queue.Empty:
                    pass
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if _STOP in batch:
                return
            if time.monotonic() - last_flush >= self._flush_interval:
                self._active.update(self._pending)
                last_flush = time.monotonic()
            sync = False
            for event_type, resource, obj in batch:
                if event_type == "SYNC":
                    sync = True
                elif event_type == "CHANGED":
                    change = self._take_newest(resource)
                    if change is not None:
                        self._apply(change[0], resource[0], change[1].obj)
                else:
                    self._apply(event_type, resource, obj.obj)
            batch = []
            try:
                self._schedule_active()
            except Exception:
                logger.exception("embedded scheduler: a scheduling pass failed; pods stay pending until the next change")
            if sync and self._queue.empty():
                self._idle.set()
            elif sync:
                self._queue.put(("SYNC", None, None))

    def _apply(self, event_type: str, resource: str, obj: dict[str, Any]) -> None:
        if self._is_stale(resource, obj):
            return
        if resource == "nodes":
            self._apply_node(event_type, obj)
        else:
            self._apply_pod(event_type, obj)
            if event_type == "DELETED":  # pods come in store order after the initial list: nothing older follows
                self._versions.pop((resource, pod_key(obj)), None)

    def _is_stale(self, resource: str, obj: dict[str, Any]) -> bool:
        """An event older than one already applied (the initial list races the first events)."""
        try:
            version = int((obj.get("metadata") or {}).get("resourceVersion") or 0)
        except ValueError:
            return False
        slot = (resource, pod_key(obj))
        if version < self._versions.get(slot, 0):
            return True
        self._versions[slot] = version
        return False

    def _apply_node(self, event_type: str, node: dict[str, Any]) -> None:
        name = (node.get("metadata") or {}).get("name", "")
        if event_type == "DELETED":
            self._nodes.pop(name, None)
            return
        try:
            self._nodes[name] = NodeInfo.from_node(node)
        except ValueError as e:
            logger.warning("embedded scheduler: ignoring node %s: %s", name, e)
            return
        self._used.setdefault(name, {})
        self._active.update(self._pending)  # a new or changed node may fit what did not fit before

    def _apply_pod(self, event_type: str, pod: dict[str, Any]) -> None:
        key = pod_key(pod)
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        phase = (pod.get("status") or {}).get("phase")
        self._forget_replaced(key, meta.get("uid", ""))
        gone = event_type == "DELETED"
        if gone or spec.get("nodeName") or meta.get("deletionTimestamp"):
            self._pending.pop(key, None)
            self._active.discard(key)
        if gone or phase in _FINISHED:
            self._release(key, meta.get("uid", ""))
            return
        if spec.get("nodeName"):
            self._track_bound(key, spec["nodeName"], pod)
        elif not meta.get("deletionTimestamp") and key not in self._pending and self._is_mine(spec):
            self._add_pending(key, pod)

    def _forget_replaced(self, key: Key, uid: str) -> None:
        """A pod deleted and re-created under the same name while queued arrives as one change: the
        old pod's pending entry and the resources it held on its node belong to it, not to the new one."""
        pending = self._pending.get(key)
        if pending is not None and pending.info.uid != uid:
            del self._pending[key]
            self._active.discard(key)
        bound = self._bound.get(key)
        if bound is not None and bound[2] != uid:
            self._release(key, bound[2])

    def _is_mine(self, spec: dict[str, Any]) -> bool:
        """Pods naming another ``schedulerName`` are left to that scheduler, as in Kubernetes."""
        return (spec.get("schedulerName") or "default-scheduler") == self._name

    def _add_pending(self, key: Key, pod: dict[str, Any]) -> None:
        self._seq += 1
        try:
            info = PodInfo.from_pod(pod)
            self._pending[key] = _Pending(info, self._seq)
        except ValueError as e:
            meta = pod.get("metadata") or {}
            info = PodInfo(key[0], key[1], meta.get("uid", ""), {res.PODS: 1})
            self._pending[key] = _Pending(info, self._seq, error=str(e))
        self._active.add(key)

    def _track_bound(self, key: Key, node: str, pod: dict[str, Any]) -> None:
        uid = (pod.get("metadata") or {}).get("uid", "")
        known = self._bound.get(key)
        if known is not None and known[2] == uid:
            return
        if known is not None:
            self._release(key, known[2])
        try:
            requests = res.pod_requests(pod)
        except ValueError:
            requests = {res.PODS: 1}
        self._bound[key] = (node, requests, uid)
        self._used[node] = res.add(self._used.get(node, {}), requests)

    def _release(self, key: Key, uid: str) -> None:
        known = self._bound.get(key)
        if known is None or (uid and known[2] and known[2] != uid):
            return
        node, requests, _ = self._bound.pop(key)
        self._used[node] = res.subtract(self._used.get(node, {}), requests)
        self._active.update(self._pending)  # capacity freed: retry what was unschedulable

    # ------------------------------------------------------------------ scheduling
    def _schedule_active(self) -> None:
        if not self._active:
            return
        order = sorted((k for k in self._active if k in self._pending),
                       key=lambda k: (-self._pending[k].info.priority, self._pending[k].seq))
        self._active.clear()
        for key in order:
            pending = self._pending.get(key)
            if pending is not None:
                self._schedule_one(key, pending)

    def _schedule_one(self, key: Key, pending: _Pending) -> None:
        if pending.error:
            self._mark_unschedulable(key, pending, pending.error)
            return
        info = pending.info
        reasons: dict[str, list[str]] = {}
        best: tuple[float, str] | None = None
        for name in sorted(self._nodes):
            node = self._nodes[name]
            free = res.subtract(node.allocatable, self._used.get(name, {}))
            why = filter_node(info, node, free)
            if why:
                reasons[name] = why
                continue
            candidate = (score(info, node, free), name)
            if best is None or candidate[0] > best[0]:
                best = candidate
        if best is None:
            self._mark_unschedulable(key, pending, fit_error_message(len(self._nodes), reasons))
        else:
            self._bind(key, pending, best[1])

    def _bind(self, key: Key, pending: _Pending, node: str) -> None:
        now = self._clock()
        bound = {"ok": False}

        def assign(pod: dict[str, Any]) -> None:
            meta, spec = pod.get("metadata") or {}, pod.setdefault("spec", {})
            if spec.get("nodeName") or meta.get("deletionTimestamp") or meta.get("uid") != pending.info.uid:
                return
            spec["nodeName"] = node
            set_condition(pod.setdefault("status", {}), condition("PodScheduled", True, now))
            pod["status"].setdefault("phase", "Pending")
            bound["ok"] = True

        try:
            pod = self._store.mutate("pods", key[0], key[1], assign)
        except StatusError as e:
            logger.debug("embedded scheduler: binding %s/%s failed: %s", key[0], key[1], e)
            if e.code == 404:
                self._pending.pop(key, None)
            return
        self._pending.pop(key, None)
        if not bound["ok"]:
            return
        self._track_bound(key, node, pod)
        logger.debug("embedded scheduler: bound %s/%s to %s", key[0], key[1], node)
        self._event(pod, "Scheduled", f"Successfully assigned {key[0]}/{key[1]} to {node}", "Normal")

    def _mark_unschedulable(self, key: Key, pending: _Pending, message: str) -> None:
        if pending.message == message:
            return
        now = self._clock()

        def mark(pod: dict[str, Any]) -> None:
            if (pod.get("spec") or {}).get("nodeName"):
                return
            status = pod.setdefault("status", {})
            status["phase"] = "Pending"
            set_condition(status, condition("PodScheduled", False, now, "Unschedulable", message))

        try:
            pod = self._store.mutate("pods", key[0], key[1], mark, status_only=True)
        except StatusError as e:
            logger.debug("embedded scheduler: marking %s/%s unschedulable failed: %s", key[0], key[1], e)
            return
        pending.message = message
        cond = get_condition(pod, "PodScheduled") or {}
        if cond.get("reason") == "Unschedulable":
            self._event(pod, "FailedScheduling", message, "Warning")

    def _event(self, pod: dict[str, Any], reason: str, message: str, type_: str) -> None:
        if not self._record_events:
            return
        try:
            self._store.record_event(pod_key(pod)[0], pod, reason, message, type=type_, source=self._name)
        except Exception:  # events are best effort, as in Kubernetes
            logger.debug("embedded scheduler: recording event %s failed", reason, exc_info=True)
