"""In-memory fakes for the backend's unit tests: a Pod API, executor pods, and an async runner.

``FakePodApi`` implements the ``PodApi`` protocol of docs/contracts.md on a dict of pods with an
increasing resourceVersion and an event history, so the watch and polling sources and the
allocator/lifecycle manager run against it unchanged. Tests can script watch streams (events,
410 ERROR events, BOOKMARKs, exceptions, ends), inject failures per method and count requests.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import itertools
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from dask_k8s_backend import labels

from dask_k8s_backend.kube.errors import (  # noqa: F401 - re-exported for the tests
    AlreadyExists, ApiUnreachable, Forbidden, Gone, KubernetesApiError, NotFound, ServerError, TooManyRequests,
)


def make_error(cls: type, message: str, **kwargs: Any) -> Exception:
    """A project API error (dask_k8s_backend.kube.errors) as KubePodApi raises it."""
    return cls(message, **kwargs)


APP_ID = "app-1"
SELECTOR = labels.app_selector(APP_ID)


def executor_pod(executor_id: int, group: str = labels.DEFAULT_GROUP, phase: str | None = "Pending",
                 app_id: str = APP_ID, resource_version: str | None = None) -> dict:
    """A worker pod as the API returns it."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"app-exec-{executor_id}",
            "labels": {labels.APP_ID: app_id, labels.ROLE: labels.ROLE_WORKER,
                       labels.EXECUTOR_ID: str(executor_id), labels.GROUP: group},
        },
        "spec": {"containers": [{"name": "worker", "image": "dask:latest"}]},
        "status": {"phase": phase} if phase else {},
    }
    if resource_version is not None:
        pod["metadata"]["resourceVersion"] = resource_version
    return pod


def failed_pod(executor_id: int, exit_code: int = 1, reason: str = "Error", group: str = labels.DEFAULT_GROUP) -> dict:
    pod = executor_pod(executor_id, group, "Failed")
    pod["status"]["containerStatuses"] = [
        {"name": "worker", "state": {"terminated": {"exitCode": exit_code, "reason": reason}}}]
    return pod


def unschedulable_pod(executor_id: int, message: str = "0/1 nodes are available: 1 Insufficient cpu.",
                      group: str = labels.DEFAULT_GROUP) -> dict:
    pod = executor_pod(executor_id, group, "Pending")
    pod["status"]["conditions"] = [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]
    return pod


def pod_factory(app_id: str = APP_ID) -> Callable[[int, str], dict]:
    def build(executor_id: int, group: str) -> dict:
        pod = executor_pod(executor_id, group, phase=None, app_id=app_id)
        del pod["status"]
        return pod
    return build


def _matches(pod: dict, selector: str) -> bool:
    pod_labels = pod["metadata"].get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if pod_labels.get(key) != value:
            return False
    return True


class FakePodApi:
    """The PodApi protocol in memory: pods, resourceVersions, history, scripted watches, failures."""

    def __init__(self, namespace: str = "default") -> None:
        self.namespace = namespace
        self.pods: dict[str, dict] = {}
        self.history: list[tuple[int, str, dict]] = []
        self.rv = 100
        self.requests: Counter[str] = Counter()
        self.watch_calls: list[tuple[str, str]] = []
        self.scripts: deque[list[Any]] = deque()
        self._failures: dict[str, deque[Exception]] = {}
        self._changed = asyncio.Event() if _loop_running() else None
        self._uid = itertools.count(1)
        self.deleted: list[str] = []
        self.created: list[str] = []

    # ------------------------------------------------------------------ test controls
    def fail_next(self, method: str, error: Exception, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` raise ``error``."""
        self._failures.setdefault(method, deque()).extend([error] * times)

    def script_watch(self, *items: Any) -> None:
        """The next watch_pods call yields these: event dicts, exceptions (raised), then ends."""
        self.scripts.append(list(items))

    def set_status(self, name: str, **status: Any) -> dict:
        """Change a pod's status (phase, conditions, containerStatuses) like a kubelet would."""
        pod = copy.deepcopy(self.pods[name])
        pod["status"] = {**pod.get("status", {}), **status}
        return self._commit("MODIFIED", pod)

    def add_pod(self, pod: dict) -> dict:
        return self._commit("ADDED", copy.deepcopy(pod))

    def remove_pod(self, name: str) -> None:
        pod = self.pods.pop(name)
        self._commit("DELETED", pod, store=False)

    # ------------------------------------------------------------------ PodApi
    async def list_pods(self, label_selector: str) -> tuple[list[dict], str]:
        self._request("list_pods")
        return [copy.deepcopy(p) for p in self.pods.values() if _matches(p, label_selector)], str(self.rv)

    def watch_pods(self, label_selector: str, resource_version: str, timeout_seconds: int) -> AsyncIterator[dict]:
        self._request("watch_pods")
        self.watch_calls.append((label_selector, resource_version))
        if self.scripts:
            return self._scripted(self.scripts.popleft())
        return self._live(label_selector, int(resource_version))

    async def create_pod(self, pod: dict) -> dict:
        self._request("create_pod")
        name = pod["metadata"]["name"]
        if name in self.pods:
            raise make_error(AlreadyExists, f'pods "{name}" already exists')
        pod = copy.deepcopy(pod)
        pod["metadata"]["uid"] = f"uid-{next(self._uid)}"
        pod.setdefault("status", {"phase": "Pending"})
        self.created.append(name)
        return self._commit("ADDED", pod)

    async def delete_pod(self, name: str, grace_period_seconds: int | None = None) -> None:
        self._request("delete_pod")
        self.deleted.append(name)
        if name in self.pods:
            self.remove_pod(name)

    async def delete_pods(self, label_selector: str) -> None:
        self._request("delete_pods")
        for name in [n for n, p in self.pods.items() if _matches(p, label_selector)]:
            self.remove_pod(name)

    async def patch_pod_labels(self, name: str, labels_: dict[str, str | None] | None = None, **kw: Any) -> dict:
        self._request("patch_pod_labels")
        changes = labels_ if labels_ is not None else kw.get("labels", {})
        if name not in self.pods:
            raise make_error(NotFound, f'pods "{name}" not found')
        pod = copy.deepcopy(self.pods[name])
        current = pod["metadata"].setdefault("labels", {})
        for key, value in changes.items():
            if value is None:
                current.pop(key, None)
            else:
                current[key] = value
        return self._commit("MODIFIED", pod)

    async def read_pod_log(self, name: str, tail_lines: int | None = None) -> str:
        self._request("read_pod_log")
        if name not in self.pods:
            raise NotFound(f'pods "{name}" not found')
        text = getattr(self, "logs", {}).get(name, "")
        return text if tail_lines is None else "".join(text.splitlines(keepends=True)[-tail_lines:])

    # ------------------------------------------------------------------ internals
    def _request(self, method: str) -> None:
        self.requests[method] += 1
        queue = self._failures.get(method)
        if queue:
            raise queue.popleft()

    def _commit(self, event_type: str, pod: dict, store: bool = True) -> dict:
        self.rv += 1
        pod["metadata"]["resourceVersion"] = str(self.rv)
        if store:
            self.pods[pod["metadata"]["name"]] = pod
        self.history.append((self.rv, event_type, copy.deepcopy(pod)))
        if self._changed is not None:
            self._changed.set()
        return copy.deepcopy(pod)

    async def _scripted(self, items: list[Any]) -> AsyncIterator[dict]:
        for item in items:
            await asyncio.sleep(0)
            if isinstance(item, BaseException):
                raise item
            yield copy.deepcopy(item)

    async def _live(self, selector: str, since: int) -> AsyncIterator[dict]:
        """Every event after ``since`` matching the selector, then new ones as they happen (forever)."""
        if self._changed is None:
            self._changed = asyncio.Event()
        while True:
            for rv, event_type, pod in [h for h in self.history if h[0] > since]:
                since = rv
                if _matches(pod, selector):
                    yield {"type": event_type, "object": copy.deepcopy(pod)}
            self._changed.clear()
            await self._changed.wait()


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


def run_async(fn: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    """Run an async test on a fresh loop with a 10 s bound; fail if it leaves tasks behind."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        async def main() -> Any:
            result = await asyncio.wait_for(fn(*args, **kwargs), 10)
            leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
            assert not leftover, f"test left asyncio tasks running: {leftover}"
            return result
        return asyncio.run(main())

    return wrapper


async def settle(rounds: int = 50) -> None:
    """Let every ready coroutine run (fakes complete without real I/O)."""
    for _ in range(rounds):
        await asyncio.sleep(0)
