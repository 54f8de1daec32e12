"""This node's pods from any API server: LIST, then WATCH from the list's resourceVersion (client-go's reflector).

Data flow: :meth:`PodReflector.list_pods` LISTs pods with ``fieldSelector=spec.nodeName=<node>``
and returns them as the kubelet's backlog; :meth:`PodReflector.start` then watches from that
resourceVersion in one thread and hands every ADDED/MODIFIED/DELETED to the sink, in order.
BOOKMARKs only move the resume point. A watch that ends (server timeout, dropped connection) is
resumed from the last resourceVersion; an expired one (410 Gone, as an HTTP answer or an ERROR
event) is replaced by a new LIST, after which pods that vanished meanwhile are reported DELETED
and the others MODIFIED. Failures back off exponentially (capped); after ``max_failures`` in a
row ``on_fatal`` is told and the loop ends: a node that cannot see its pods must say so.
The :class:`PodCache` holds the newest version of each pod seen (watch or our own writes).
"""

from __future__ import annotations

import json
import logging
import random
import threading
from typing import Any, Callable, Iterable

from ..transport import Key, LoadedPod, Pod, PodItem, PodSink
from dask_k8s_backend.kube.errors import Gone, KubernetesApiError

logger = logging.getLogger(__name__)

PODS_PATH = "/api/v1/pods"


def pod_key(pod: Pod) -> Key:
    meta = pod.get("metadata") or {}
    return meta.get("namespace") or "default", meta.get("name", "")


def _rv(pod: Pod | None) -> int:
    try:
        return int(((pod or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:  # opaque to clients; kube-apiserver's are integers, so ordering works there
        return 0


class PodCache:
    """The newest known version of each of this node's pods; thread-safe."""

    def __init__(self) -> None:
        self._pods: dict[Key, Pod] = {}
        self._lock = threading.Lock()

    def get(self, key: Key) -> Pod | None:
        with self._lock:
            return self._pods.get(key)

    def put(self, pod: Pod) -> None:
        """Keep ``pod`` unless a newer version of the same pod (same uid) is already known."""
        key = pod_key(pod)
        with self._lock:
            old = self._pods.get(key)
            same = old is not None and (old.get("metadata") or {}).get("uid") == (pod.get("metadata") or {}).get("uid")
            if not same or _rv(pod) >= _rv(old):
                self._pods[key] = pod

    def remove(self, pod: Pod) -> None:
        key = pod_key(pod)
        with self._lock:
            old = self._pods.get(key)
            if old is not None and (old.get("metadata") or {}).get("uid") == (pod.get("metadata") or {}).get("uid"):
                del self._pods[key]

    def replace_all(self, pods: Iterable[Pod]) -> list[Pod]:
        """Make ``pods`` the whole content; returns the pods that were dropped."""
        fresh = {pod_key(p): p for p in pods}
        with self._lock:
            dropped = [p for k, p in self._pods.items()
                       if k not in fresh or (fresh[k].get("metadata") or {}).get("uid") != (p.get("metadata") or {}).get("uid")]
            self._pods = fresh
        return dropped

    def keys(self) -> set[Key]:
        with self._lock:
            return set(self._pods)


class PodReflector:
    """List-then-watch of the pods bound to one node (see the module docstring)."""

    def __init__(self, http: Any, node_name: str, sink: PodSink, *, cache: PodCache | None = None,
                 on_fatal: Callable[[BaseException], None] | None = None, max_failures: int = 30,
                 backoff_start: float = 0.5, backoff_max: float = 10.0, watch_timeout: int = 300) -> None:
        self.http = http
        self.node_name = node_name
        self.sink = sink
        self.cache = cache if cache is not None else PodCache()
        self.on_fatal = on_fatal
        self.max_failures = max_failures
        self.backoff_start, self.backoff_max = backoff_start, backoff_max
        self.watch_timeout = watch_timeout
        self.resource_version = ""
        self._stop = threading.Event()
        self._stream: Any = None
        self._thread: threading.Thread | None = None

    @property
    def _selector(self) -> str:
        return f"spec.nodeName={self.node_name}"

    # ------------------------------------------------------------------ list
    def list_pods(self) -> list[tuple[str, PodItem]]:
        """The first LIST: every pod bound to the node, as ADDED items; sets the resume point."""
        pods = self._list()
        self.cache.replace_all(pods)
        return [("ADDED", LoadedPod(p)) for p in pods]

    def _list(self) -> list[Pod]:
        answer = self.http.request("GET", PODS_PATH, query={"fieldSelector": self._selector},
                                   action=f"list the pods of node {self.node_name}")
        self.resource_version = (answer.get("metadata") or {}).get("resourceVersion", "")
        pods = answer.get("items") or []
        for pod in pods:  # items of a LIST carry no kind
            pod.setdefault("apiVersion", "v1")
            pod.setdefault("kind", "Pod")
        return pods

    def relist(self) -> None:
        """After an expired watch: LIST again, report vanished pods DELETED and the rest MODIFIED."""
        pods = self._list()
        for pod in self.cache.replace_all(pods):
            self.sink("DELETED", LoadedPod(pod))
        for pod in pods:
            self.sink("MODIFIED", LoadedPod(pod))

    # ------------------------------------------------------------------ watch
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"node-{self.node_name}-pods", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self.watch_once()
                failures = 0
            except Gone:
                logger.info("node %s: pod watch expired at resourceVersion %s; listing again", self.node_name,
                            self.resource_version)
                failures = self._retry(failures, self.relist)
            except Exception as e:  # connection lost, 5xx, bad line: back off and resume
                if self._stop.is_set():
                    return
                failures += 1
                if not self._may_retry(failures, e):
                    return
                self._stop.wait(self._delay(failures))

    def _retry(self, failures: int, fn: Callable[[], None]) -> int:
        while not self._stop.is_set():
            try:
                fn()
                return 0
            except Exception as e:
                failures += 1
                if not self._may_retry(failures, e):
                    self._stop.set()
                    return failures
                self._stop.wait(self._delay(failures))
        return failures

    def _may_retry(self, failures: int, error: BaseException) -> bool:
        if failures < self.max_failures:
            logger.warning("node %s: watching pods failed (%d in a row, retrying): %s", self.node_name, failures, error)
            return True
        logger.error("node %s: watching pods failed %d times in a row, giving up: %s", self.node_name, failures, error)
        if self.on_fatal is not None:
            self.on_fatal(error)
        return False

    def _delay(self, failures: int) -> float:
        delay = min(self.backoff_max, self.backoff_start * 2 ** (failures - 1))
        return delay * random.uniform(0.8, 1.0)

    def watch_once(self) -> None:
        """One watch request from the resume point until the server ends it; raises Gone when expired."""
        query = {"watch": True, "fieldSelector": self._selector, "resourceVersion": self.resource_version,
                 "allowWatchBookmarks": True, "timeoutSeconds": self.watch_timeout}
        self._stream = self.http.stream(PODS_PATH, query=query, read_timeout=self.watch_timeout + 30)
        try:
            for line in self._stream:
                if self._stop.is_set():
                    return
                self.handle(json.loads(line))
        finally:
            self._stream.close()
            self._stream = None

    def handle(self, event: dict[str, Any]) -> None:
        """One watch event: ERROR raises, BOOKMARK moves the resume point, the rest go to the sink."""
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            error_type = Gone if code == 410 else KubernetesApiError
            raise error_type(obj.get("message") or "watch error", code=code, reason=obj.get("reason"), status=obj)
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self.resource_version = rv
        if kind == "BOOKMARK":
            return
        if kind == "DELETED":
            self.cache.remove(obj)
        else:
            self.cache.put(obj)
        self.sink(kind, LoadedPod(obj))
