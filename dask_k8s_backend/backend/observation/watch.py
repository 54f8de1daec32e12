"""ExecutorPodsWatchSource: keeps the snapshots store current from a Kubernetes watch.

Data flow (client-go's reflector, in small steps)::

    list_pods(selector) ──> store.replace_snapshot(pods, rv) ──> watch_pods(selector, rv, bookmarks)
        ADDED/MODIFIED/DELETED ──> store.update_pod(pod, deleted) ; resume point = event's rv
        BOOKMARK               ──> resume point = bookmark's rv (nothing to store)
        ERROR 410 / Gone       ──> list again and replace (the resume point is too old)
        stream end / error     ──> watch again from the resume point, with capped exponential backoff

The resume point only moves forward past events already given to the store, so a restart never
loses an update; events at or below the resume point (integer resourceVersions) are dropped, so
a server that repeats itself never duplicates one. Backoff resets after a stream that delivered
anything. ``KubePodApi.watch_pods`` asks for bookmarks (allowWatchBookmarks).

Interface: ``ExecutorPodsWatchSource(api, store, selector, clock, timeout_seconds=300)``;
``start()``, ``await stop()``; ``restarts`` and ``relists`` count what happened.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..tasks import cancel_and_wait
from dask_k8s_backend.clock import Clock, SystemClock

logger = logging.getLogger(__name__)


class WatchError(Exception):
    """An ERROR event other than 410 in the watch stream."""


class ResyncNeeded(Exception):
    """The resume point is too old (410 Gone): list again."""


def _code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else None


def _rv_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class ExecutorPodsWatchSource:
    def __init__(
        self,
        api: Any,
        store: Any,
        selector: str,
        clock: Clock | None = None,
        *,
        timeout_seconds: int = 300,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self.api = api
        self.store = store
        self.selector = selector
        self.clock = clock or SystemClock()
        self.timeout_seconds = timeout_seconds
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.resource_version: str | None = None
        self.restarts = 0
        self.relists = 0
        self._backoff = 0.0
        self._task: asyncio.Task[None] | None = None
        self.listed = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            delivered = False
            try:
                if self.resource_version is None:
                    await self._list()
                delivered = await self._watch_once()
            except asyncio.CancelledError:
                raise
            except ResyncNeeded:
                logger.info("pod watch (%s): resourceVersion %s is too old; listing again", self.selector, self.resource_version)
                self.resource_version = None
                continue
            except Exception as e:
                if _code(e) == 410:
                    self.resource_version = None
                    continue
                logger.warning("pod watch (%s) failed: %s; restarting from resourceVersion %s",
                               self.selector, e, self.resource_version)
            self.restarts += 1
            await self._pause(delivered)

    async def _pause(self, delivered: bool) -> None:
        """No pause after a productive stream; else 0.5 s, 1 s, 2 s, ... capped."""
        if delivered:
            self._backoff = 0.0
            return
        self._backoff = min(self.backoff_max, self._backoff * 2 if self._backoff else self.backoff_initial)
        await self.clock.sleep(self._backoff)

    async def _list(self) -> None:
        pods, resource_version = await self.api.list_pods(self.selector)
        self.store.replace_snapshot(pods, resource_version)
        self.resource_version = resource_version
        self.relists += 1
        self.listed.set()

    async def _watch_once(self) -> bool:
        """One watch stream from the resume point; True if it delivered any event."""
        delivered = False
        stream = self.api.watch_pods(self.selector, self.resource_version or "", self.timeout_seconds)
        try:
            async for event in stream:
                delivered = True
                self._handle(event)
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()
        return delivered

    def _handle(self, event: dict) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise ResyncNeeded()
            raise WatchError(f"the watch stream reported an error: {obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if kind == "BOOKMARK":
            self.resource_version = rv or self.resource_version
            return
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            logger.debug("pod watch (%s): ignoring event type %s", self.selector, kind)
            return
        new, old = _rv_int(rv), _rv_int(self.resource_version)
        if new is not None and old is not None and new <= old:
            return  # already delivered before a restart
        self.store.update_pod(obj, deleted=kind == "DELETED")
        if rv:
            self.resource_version = rv
