"""The nodes' allocatable resources, for the allocator's "can this request ever fit?" verdict.

Data flow: a loop lists the Nodes every ``interval`` seconds (the API's ``list nodes``) and keeps
each node's ``status.allocatable`` as numbers; the allocator reads :meth:`NodeCapacity.current`
at each round. Listing nodes needs a cluster-wide permission a namespaced Role cannot give: when
it is refused, ``current()`` stays None (said once at INFO) and Unschedulable pods simply keep
``pending-timeout``. Nothing here decides anything.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from dask_k8s_backend.clock import Clock
from dask_k8s_backend.kube.errors import Forbidden
from dask_k8s_backend.pods.verdicts import Allocatable, node_allocatable
from ..tasks import stop_quietly

logger = logging.getLogger(__name__)

NODE_REFRESH = 30.0


class NodeCapacity:
    """Every node's allocatable resources, refreshed in the background; None while unknown."""

    def __init__(self, *, api: Any, clock: Clock, interval: float = NODE_REFRESH) -> None:
        self.api = api
        self.clock = clock
        self.interval = interval
        self._nodes: tuple[Allocatable, ...] | None = None
        self._task: asyncio.Task[None] | None = None

    def current(self) -> tuple[Allocatable, ...] | None:
        return self._nodes

    def start(self) -> None:
        if self._task is None and hasattr(self.api, "list_nodes"):
            self._task = asyncio.create_task(self._run())

    async def refresh(self) -> bool:
        """List the nodes once; False when they cannot be listed (no permission): stop asking."""
        try:
            nodes = await self.api.list_nodes()
        except Forbidden:
            logger.info("the backend may not list nodes; pods too big for every node fail after "
                        "k8s-backend.allocation.pending-timeout instead of at once")
            return False
        except Exception as e:
            logger.debug("listing nodes failed (%s); retrying later", e)
            return True
        self._nodes = tuple(node_allocatable(n) for n in nodes if not (n.get("spec") or {}).get("unschedulable"))
        return True

    async def _run(self) -> None:
        while await self.refresh():
            await self.clock.sleep(self.interval)

    async def stop(self) -> None:
        await stop_quietly(self._task)
        self._task = None
