"""Pod admission for the embedded API server: LimitRange defaults and limits, ResourceQuota.

Data flow on ``POST .../pods``: the API server calls :meth:`Admission.create_pod` instead of
``store.create``. Under one admission lock (so two concurrent creations cannot both take the
last unit of a quota) it

0. adds upstream's DefaultTolerationSeconds tolerations (not-ready and unreachable, NoExecute, 300 s),
1. applies the namespace's LimitRange container defaults (``default`` / ``defaultRequest``),
2. refuses min/max violations (403 Forbidden, kube-apiserver's "minimum cpu usage per Container ..."),
3. refuses a pod that leaves a quota-constrained cpu/memory unset ("failed quota: q: must specify ...")
   or that would take any ResourceQuota's ``status.used`` over ``spec.hard``
   (403 Forbidden, ``exceeded quota: q, requested: ..., used: ..., limited: ...``),
4. creates the pod in the store.

A small controller thread (:meth:`start`/:meth:`stop`) keeps every quota's ``status.hard`` and
``status.used`` current as pods are created, finish (Succeeded/Failed pods stop counting) or go
away, like kube-controller-manager's resourcequota controller. The rules themselves are the pure
functions of :mod:`dask_k8s_backend.kube.quotas`.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from dask_k8s_backend.kube import quotas
from ..status import StatusError

logger = logging.getLogger(__name__)

_STOP = object()


_NOT_READY = "node.kubernetes.io/not-ready"
_UNREACHABLE = "node.kubernetes.io/unreachable"
DEFAULT_TOLERATION_SECONDS = 300  # kube-apiserver's --default-not-ready/unreachable-toleration-seconds


def default_tolerations(pod: dict) -> dict:
    """The pod with upstream's DefaultTolerationSeconds admission applied (a copy when it changes).

    A pod that does not tolerate ``not-ready`` / ``unreachable`` NoExecute taints (a toleration
    with that key or no key, and effect NoExecute or none) gets one for 300 seconds, as every pod
    on a real cluster does (plugin/pkg/admission/defaulttolerationseconds).
    """
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return pod
    tolerations = [t for t in spec.get("tolerations") or [] if isinstance(t, dict)]
    missing = [key for key in (_NOT_READY, _UNREACHABLE) if not any(
        t.get("key") in (key, None, "") and t.get("effect") in ("NoExecute", None, "") for t in tolerations)]
    if not missing:
        return pod
    added = [{"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": DEFAULT_TOLERATION_SECONDS}
             for key in missing]
    return {**pod, "spec": {**spec, "tolerations": [*(spec.get("tolerations") or []), *added]}}


def _forbidden(message: str, name: str) -> StatusError:
    return StatusError(403, "Forbidden", message, {"name": name, "kind": "pods"})


class Admission:
    """LimitRange and ResourceQuota admission for pod creations, plus the quota status controller."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._unsubscribe: Any = None
        self._quota_namespaces: set[str] = set()

    # ---------------------------------------------------------------- admission
    def create_pod(self, namespace: str, pod: dict) -> dict:
        """Admit ``pod`` (defaults applied, limits and quotas checked), then store it."""
        with self._lock:
            admitted = self.admit_pod(namespace, pod)
            created = self.store.create("pods", namespace, admitted)
        self._queue.put(namespace)
        return created

    def admit_pod(self, namespace: str, pod: dict) -> dict:
        """The pod with default tolerations and LimitRange defaults; raises the 403 StatusError kube-apiserver would send."""
        pod = default_tolerations(pod)
        meta = pod.get("metadata") or {}
        name = meta.get("name") or meta.get("generateName") or ""
        limit_ranges = self.store.list("limitranges", namespace)[0]
        if limit_ranges:
            pod = quotas.apply_limit_ranges(pod, limit_ranges)
            problems = quotas.limit_range_violations(pod, limit_ranges)
            if problems:
                raise _forbidden(f'pods "{name}" is forbidden: {quotas.aggregate(problems)}', name)
        resource_quotas = self.store.list("resourcequotas", namespace)[0]
        if resource_quotas:
            pods = self.store.list("pods", namespace)[0]
            for quota in sorted(resource_quotas, key=lambda q: q["metadata"]["name"]):
                self._check_quota(name, pod, quota, pods)
        return pod

    @staticmethod
    def _check_quota(name: str, pod: dict, quota: dict, pods: list[dict]) -> None:
        quota_name = quota["metadata"]["name"]
        if not quotas.quota_applies(quota, pod):
            return
        hard = quotas.parse_hard((quota.get("spec") or {}).get("hard"))
        missing = quotas.missing_requirements(pod, hard)
        if missing:
            raise _forbidden(f'pods "{name}" is forbidden: failed quota: {quota_name}: must specify '
                             f"{'; '.join(missing)}", name)
        request = quotas.pod_usage(pod, hard)
        used = quotas.namespace_usage(pods, hard, quota)
        keys = quotas.exceeded_keys(request, used, hard)
        if keys:
            message = quotas.exceeded_message(name, quota_name, keys, request, used, hard)
            logger.info("admission: %s", message)
            raise _forbidden(message, name)

    # ---------------------------------------------------------------- quota status controller
    def start(self) -> None:
        """Keep quotas' status current from now on (idempotent)."""
        if self._thread is not None:
            return
        backlog, self._unsubscribe = self.store.subscribe("resourcequotas", None, self._on_event)
        for event in backlog:
            self._on_event(event)
        self._thread = threading.Thread(target=self._run, name="embedded-quota-controller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the controller thread and wait for it (idempotent)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout=5)
            self._thread = None

    def _on_event(self, event: Any) -> None:
        """Store subscriber (runs under the store's lock, event read-only): only queue work here.

        Pods matter only in namespaces with a quota, and only when they appear, go away or change phase.
        """
        obj = event.entry.view  # metadata and status.phase are all this needs: nothing is parsed
        namespace = (obj.get("metadata") or {}).get("namespace")
        if event.resource == "resourcequotas":
            self._quota_namespaces.add(namespace)
            self._queue.put(namespace)
        elif event.resource == "pods" and namespace in self._quota_namespaces:
            old_phase = (event.old.view.get("status") or {}).get("phase") if event.old is not None else None
            if event.type != "MODIFIED" or old_phase != (obj.get("status") or {}).get("phase"):
                self._queue.put(namespace)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            pending = {item}
            while True:  # coalesce a burst of changes into one refresh per namespace
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    self._refresh_all(pending)
                    return
                pending.add(more)
            self._refresh_all(pending)

    def _refresh_all(self, namespaces: set[str]) -> None:
        for namespace in namespaces:
            try:
                self.refresh_used(namespace)
            except Exception:
                logger.exception("refreshing the ResourceQuota status of namespace %s failed", namespace)

    def refresh_used(self, namespace: str) -> None:
        """Write ``status.hard`` and ``status.used`` of every quota in ``namespace`` (no-op when unchanged)."""
        resource_quotas = self.store.list("resourcequotas", namespace)[0]
        if not resource_quotas:
            return
        pods = self.store.list("pods", namespace)[0]
        for quota in resource_quotas:
            hard_raw = dict((quota.get("spec") or {}).get("hard") or {})
            used = quotas.namespace_usage(pods, quotas.parse_hard(hard_raw), quota)
            status = {"hard": hard_raw, "used": {k: quotas.format_quantity(k, v) for k, v in used.items()}}
            if quota.get("status") == status:
                continue

            def write(obj: dict, status: dict = status) -> None:
                obj["status"] = status

            try:
                self.store.mutate("resourcequotas", namespace, quota["metadata"]["name"], write, status_only=True)
            except StatusError as e:
                if e.code != 404:
                    raise
