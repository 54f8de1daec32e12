"""ExecutorPodsPollingSource: a full resync of the app's pods every ``api-polling-interval``.

Data flow: ``api.list_pods(selector)`` ──> ``store.replace_snapshot(pods, resource_version)``.
A safety net behind the watch source (which keeps the store current): it repairs anything a
missed event left wrong and gives the lifecycle manager the full snapshots it uses to detect
missing pods. A failed list is logged and retried at the next interval.

Interface: ``ExecutorPodsPollingSource(api, store, selector, clock, interval=30.0)``;
``start()``, ``await poll_once()``, ``await stop()``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..tasks import cancel_and_wait
from dask_k8s_backend.clock import Clock, SystemClock

logger = logging.getLogger(__name__)


class ExecutorPodsPollingSource:
    def __init__(self, api: Any, store: Any, selector: str, clock: Clock | None = None, *, interval: float = 30.0) -> None:
        if interval <= 0:
            raise ValueError(f"k8s-backend.executor.api-polling-interval must be > 0 seconds, got {interval!r}.")
        self.api = api
        self.store = store
        self.selector = selector
        self.clock = clock or SystemClock()
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Poll every interval, the first time one interval from now (the watch lists at start)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self.clock.sleep(self.interval)
            await self.poll_once()

    async def poll_once(self) -> bool:
        """One resync; False (logged) when the list failed."""
        try:
            pods, resource_version = await self.api.list_pods(self.selector)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            logger.warning("polling pods (%s) failed: %s; retrying in %s s", self.selector, e, self.interval)
            return False
        self.store.replace_snapshot(pods, resource_version)
        return True

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
