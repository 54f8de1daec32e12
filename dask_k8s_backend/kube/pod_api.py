"""The pod API the backend uses, and its implementation on the official Kubernetes client.

Data flow: allocator / lifecycle manager / watch and polling sources ──await──> ``KubePodApi``
──(worker thread)──> ``CoreV1Api`` with ``_preload_content=False`` ──> raw JSON bytes ──>
``json.loads`` ──> plain dicts back on the event loop. Model classes are never built: parsing
thousands of pods through them is slow and the rest of the project works on dicts.

Blocking calls run in a small thread pool owned by this object, so the scheduler's event loop
never blocks. A watch is one dedicated thread reading the chunked stream and handing the parsed
events of each chunk, as one batch, to an ``asyncio.Queue`` (one event-loop wake-up per chunk, not
per event: a 5000-pod ramp brings some 20,000 events); closing or cancelling the async iterator shuts the
socket down (``HTTPResponse.shutdown``), which wakes the reader thread so it ends at once.
Every API failure is translated to a :class:`dask_k8s_backend.kube.errors.KubernetesApiError`
subclass in :func:`_translate` (one place); retries and rate limits live in the ``ApiClient``.
Every answered or failed request is reported to ``on_request(verb, code)`` (the backend's metrics
count them; it runs in a worker thread): ``code`` is the HTTP status, or 0 when no answer came.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar, runtime_checkable

from .client import API_THREADS, STREAM_CONNECTIONS
from .errors import translate, Gone, NotFound

logger = logging.getLogger(__name__)

T = TypeVar("T")
LIST_PAGE_SIZE = 500
MERGE_PATCH = "application/merge-patch+json"
_END = object()
# The first words of an action -> the Kubernetes verb (the API's own names, as in audit logs).
VERBS = (("delete pods", "deletecollection"), ("read", "get"), ("list", "list"), ("watch", "watch"),
         ("create", "create"), ("delete", "delete"), ("patch", "patch"))
RequestObserver = Callable[[str, int], None]


def verb_of(action: str) -> str:
    return next((verb for prefix, verb in VERBS if action.startswith(prefix)), action.split(" ", 1)[0])


@runtime_checkable
class PodApi(Protocol):
    """What the backend needs from Kubernetes: one namespace, pods selected by labels."""

    namespace: str

    async def list_pods(self, label_selector: str) -> tuple[list[dict], str]:
        """All matching pods and the list's resourceVersion (the point to watch from)."""

    def watch_pods(self, label_selector: str, resource_version: str, timeout_seconds: int) -> AsyncIterator[dict]:
        """Raw watch events ``{"type": ..., "object": ...}`` (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR)."""

    async def create_pod(self, pod: dict) -> dict: ...

    async def delete_pod(self, name: str, grace_period_seconds: int | None = None) -> None:
        """Delete one pod; a pod that is already gone is not an error."""

    async def delete_pods(self, label_selector: str) -> None:
        """Delete every matching pod in one request (deletecollection)."""

    async def patch_pod_labels(self, name: str, labels: dict[str, str | None]) -> dict:
        """Set labels (``None`` removes one); returns the patched pod."""

    async def read_pod_log(self, name: str, tail_lines: int | None = None) -> str: ...


def _translate(exc: BaseException, action: str) -> BaseException:
    """The project's typed error for an API failure (``errors.translate`` is the one place that knows how)."""
    return translate(exc, action)


class KubePodApi:
    """:class:`PodApi` on ``kubernetes.client.CoreV1Api``; call :meth:`close` when done (idempotent)."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        *,
        max_threads: int = API_THREADS,
        request_timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        from kubernetes import client as k8s

        self.namespace = namespace
        self._core = k8s.CoreV1Api(api_client)
        # More threads than pooled connections (less those the watches hold) would open and discard a
        # connection per extra call.
        pool_size = getattr(getattr(api_client, "configuration", None), "connection_pool_maxsize", None)
        if isinstance(pool_size, int) and pool_size > 0:
            max_threads = max(1, min(max_threads, pool_size - STREAM_CONNECTIONS))
        self._pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="k8s-api")
        self._request_timeout = request_timeout
        self._connect_timeout = connect_timeout or request_timeout
        self._watches: set[_WatchStream] = set()
        self._closed = False
        self.on_request: RequestObserver | None = None

    def _observe(self, action: str, code: int) -> None:
        """Report one request; an observer's failure never fails the request."""
        if self.on_request is not None:
            try:
                self.on_request(verb_of(action), code)
            except Exception:
                logger.debug("the request observer failed for %s", action, exc_info=True)

    def __repr__(self) -> str:
        return f"KubePodApi(namespace={self.namespace!r})"

    # ------------------------------------------------------------------ plumbing
    def _timeout(self, read: float | None = None) -> Any:
        read = read if read is not None else self._request_timeout
        if read is None:
            return None
        return (self._connect_timeout or read, read)

    async def _call(self, action: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._closed:
            raise RuntimeError(f"KubePodApi for namespace {self.namespace!r} is closed; cannot {action}.")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))
        except Exception as e:
            translated = _translate(e, action)
            self._observe(action, int(getattr(translated, "code", 0) or 0))
            if translated is e:
                raise
            raise translated from e

    async def _json(self, action: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call with ``_preload_content=False`` and parse the body in the worker thread."""

        def run() -> Any:
            response = fn(*args, _preload_content=False, _request_timeout=self._timeout(), **kwargs)
            self._observe(action, response.status)
            try:
                return json.loads(response.data)
            finally:
                response.release_conn()

        return await self._call(action, run)

    # ------------------------------------------------------------------ PodApi
    async def list_pods(self, label_selector: str) -> tuple[list[dict], str]:
        """Paged list (``limit``/``continue``): the pages form one consistent snapshot.

        A continue token that expired between pages (410) restarts the list once without paging.
        """
        try:
            return await self._list_pages(label_selector, LIST_PAGE_SIZE)
        except Gone:
            logger.info("the paged list of pods (%s) expired; listing them in one request", label_selector)
            return await self._list_pages(label_selector, None)

    async def _list_pages(self, label_selector: str, limit: int | None) -> tuple[list[dict], str]:
        items: list[dict] = []
        token: str | None = None
        while True:
            page = await self._json(
                f"list pods ({label_selector}) in namespace {self.namespace}",
                self._core.list_namespaced_pod, self.namespace, label_selector=label_selector,
                limit=limit, _continue=token,
            )
            items += page.get("items") or []
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                return items, meta.get("resourceVersion", "")

    def watch_pods(self, label_selector: str, resource_version: str, timeout_seconds: int) -> AsyncIterator[dict]:
        if self._closed:
            raise RuntimeError(f"KubePodApi for namespace {self.namespace!r} is closed; cannot watch pods.")
        stream = _WatchStream(self, label_selector, resource_version, timeout_seconds)
        return stream.events()

    async def create_pod(self, pod: dict) -> dict:
        name = (pod.get("metadata") or {}).get("name", "?")
        return await self._json(f"create pod {name} in namespace {self.namespace}",
                                self._core.create_namespaced_pod, self.namespace, pod)

    async def delete_pod(self, name: str, grace_period_seconds: int | None = None) -> None:
        try:
            await self._json(f"delete pod {name} in namespace {self.namespace}", self._core.delete_namespaced_pod,
                             name, self.namespace, grace_period_seconds=grace_period_seconds)
        except NotFound:
            logger.debug("pod %s was already gone", name)

    async def delete_pods(self, label_selector: str) -> None:
        await self._json(f"delete pods ({label_selector}) in namespace {self.namespace}",
                         self._core.delete_collection_namespaced_pod, self.namespace, label_selector=label_selector)

    async def patch_pod_labels(self, name: str, labels: dict[str, str | None]) -> dict:
        return await self._json(f"patch the labels of pod {name} in namespace {self.namespace}",
                                self._core.patch_namespaced_pod, name, self.namespace,
                                {"metadata": {"labels": labels}}, _content_type=MERGE_PATCH)

    async def list_nodes(self) -> list[dict]:
        """Every Node (cluster-scoped: a namespaced Role cannot grant it, so callers treat 403 as 'unknown')."""
        page = await self._json("list nodes", self._core.list_node)
        return page.get("items") or []

    async def read_pod_log(self, name: str, tail_lines: int | None = None) -> str:
        action = f"read the log of pod {name} in namespace {self.namespace}"

        def run() -> str:
            response = self._core.read_namespaced_pod_log(name, self.namespace, tail_lines=tail_lines,
                                                          _preload_content=False, _request_timeout=self._timeout())
            self._observe(action, response.status)
            try:
                return response.data.decode("utf-8", errors="replace")
            finally:
                response.release_conn()

        return await self._call(action, run)

    # ------------------------------------------------------------------ shutdown
    async def close(self) -> None:
        """Stop every open watch and the thread pool (waiting for running calls in a thread)."""
        if self._closed:
            return
        self._closed = True
        for stream in list(self._watches):
            stream.stop()
        for stream in list(self._watches):
            await stream.wait_finished()
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown, True)


class _WatchStream:
    """One watch request read by one thread; events reach the event loop through a queue."""

    def __init__(self, api: KubePodApi, label_selector: str, resource_version: str, timeout_seconds: int) -> None:
        self._api = api
        self._selector = label_selector
        self._resource_version = resource_version
        self._timeout_seconds = timeout_seconds
        self._lock = threading.Lock()
        self._response: Any = None
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._finished: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._action = f"watch pods ({label_selector}) in namespace {api.namespace}"

    async def events(self) -> AsyncIterator[dict]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._finished, self._loop = asyncio.Event(), loop

        def deliver(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed under us: nobody is listening
                loop.call_soon_threadsafe(queue.put_nowait, item)

        self._thread = threading.Thread(target=self._run, args=(deliver,), name="k8s-watch", daemon=True)
        self._api._watches.add(self)
        self._thread.start()
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    translated = _translate(item, self._action)
                    raise translated from (item if translated is not item else None)
                for event in item:
                    yield event
        finally:
            self.stop()
            await self.wait_finished()
            self._api._watches.discard(self)

    def _run(self, deliver: Callable[[Any], None]) -> None:
        try:
            response = self._api._core.list_namespaced_pod(
                self._api.namespace, label_selector=self._selector, resource_version=self._resource_version or None,
                watch=True, allow_watch_bookmarks=True, timeout_seconds=int(self._timeout_seconds),
                _preload_content=False, _request_timeout=self._api._timeout(self._timeout_seconds + 30),
            )
            self._api._observe(self._action, response.status)
            with self._lock:
                self._response = response
                stopped = self._stopped
            if not stopped:
                for lines in _line_batches(response):
                    if self._stopped:
                        break
                    deliver([json.loads(line) for line in lines])
        except Exception as e:
            if self._response is None:  # the watch request itself failed (not a stream cut short)
                self._api._observe(self._action, int(getattr(_translate(e, self._action), "code", 0) or 0))
            if not self._stopped:
                deliver(e)
        finally:
            with self._lock:
                response, self._response = self._response, None
            if response is not None:
                with contextlib.suppress(Exception):
                    response.close()
                    response.release_conn()
            deliver(_END)
            self._signal_finished()

    def _signal_finished(self) -> None:
        if self._loop is not None and self._finished is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._finished.set)

    def stop(self) -> None:
        """Wake the reader thread: shut the socket down so a blocked read returns (thread-safe)."""
        with self._lock:
            self._stopped = True
            response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()

    async def wait_finished(self, timeout: float = 10.0) -> None:
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        if self._finished is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._finished.wait(), timeout)
        if thread.is_alive():
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 1.0)
        if thread.is_alive():
            logger.warning("the watch thread for %s did not stop within %s s", self._selector, timeout)


def _line_batches(response: Any) -> Iterator[list[bytes]]:
    """The complete non-empty lines of each chunk of a chunked response, one list per chunk that ends any.

    A JSON object may span several chunks: its start waits in the buffer for its end.
    """
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=False):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        complete = [line for line in lines if line.strip()]
        if complete:
            yield complete
    if buffer.strip():
        yield [buffer]
