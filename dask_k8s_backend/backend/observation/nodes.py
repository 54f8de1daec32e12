"""The nodes' allocatable resources, for the allocator's "can this request ever fit?" verdict.

Data flow: a loop lists the Nodes every ``interval`` seconds (the API's ``list nodes``) and keeps
each node's ``status.allocatable`` as numbers; the allocator reads :meth:`NodeCapacity.current`
at each round. Listing nodes needs a cluster-wide permission a namespaced Role cannot give: when
it is refused, ``current()`` stays None (said once at INFO) and Unschedulable pods simply keep
``pending-timeout``. Nothing here decides anything.

:func:`lost_node_reason` and :class:`LostNodePods` serve shutdown: a pod whose node stopped
answering never gets a kubelet to confirm its deletion, so after the normal delete it is
force-deleted (grace period 0) once its node is NotReady, unreachable or gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

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


def lost_node_reason(node_name: str, nodes: dict[str, dict[str, Any]]) -> str | None:
    """Why no kubelet will confirm a deletion on ``node_name`` (gone, Ready Unknown or False), else None.

    Why these signs: the node lifecycle controller sets Ready to Unknown when the kubelet stops
    renewing its Lease (a dead or partitioned node) and the kubelet itself reports False; either
    way the pods' containers are not being stopped by anyone who will tell the API server.
    """
    node = nodes.get(node_name)
    if node is None:
        return f"node {node_name} no longer exists"
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") != "Ready" or condition.get("status") == "True":
            continue
        state = "unreachable" if condition.get("status") == "Unknown" else "not ready"
        detail = condition.get("message") or condition.get("reason") or "no message"
        return f"node {node_name} is {state} (Ready {condition.get('status')} since " \
               f"{condition.get('lastTransitionTime') or '?'}: {detail})"
    return None


class LostNodePods:
    """Force-deletes (grace period 0) the terminating pods whose node is lost; each pod once, with a log line.

    Used by the backend's shutdown after its normal delete. Nodes are listed at most every
    ``interval`` seconds, and only while some pod is terminating; without permission to list
    nodes (a namespaced Role) nothing is forced and that is said once.
    """

    def __init__(self, api: Any, *, interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.interval = interval
        self.clock = clock
        self.forced: set[str] = set()
        self._next_check = float("-inf")
        self._refused = not hasattr(api, "list_nodes")

    async def force_delete(self, pods: list[dict[str, Any]]) -> int:
        """Force-delete those of ``pods`` stuck on a lost node; how many were force-deleted now."""
        stuck = [p for p in pods if _terminating_on_a_node(p) and p["metadata"].get("name") not in self.forced]
        if not stuck or self._refused or self.clock() < self._next_check:
            return 0
        self._next_check = self.clock() + self.interval
        nodes = await self._nodes()
        if nodes is None:
            return 0
        count = 0
        for pod in stuck:
            reason = lost_node_reason(pod["spec"]["nodeName"], nodes)
            if reason is not None:
                count += await self._force(pod["metadata"]["name"], reason)
        return count

    async def _nodes(self) -> dict[str, dict[str, Any]] | None:
        try:
            return {(n.get("metadata") or {}).get("name", ""): n for n in await self.api.list_nodes()}
        except Forbidden:
            self._refused = True
            logger.info("the backend may not list nodes: pods on a lost node are left Terminating at shutdown "
                        "(`kubectl delete pod --force --grace-period=0` removes them)")
        except Exception as e:
            logger.debug("listing nodes failed (%s); retrying", e)
        return None

    async def _force(self, name: str, reason: str) -> int:
        try:
            await self.api.delete_pod(name, grace_period_seconds=0)
        except Exception as e:
            logger.warning("force-deleting pod %s failed (%s); retrying", name, e)
            return 0
        self.forced.add(name)
        logger.warning("pod %s force-deleted (grace period 0) after its normal delete: %s, so no kubelet will "
                       "confirm its deletion and it would stay Terminating", name, reason)
        return 1


def _terminating_on_a_node(pod: dict[str, Any]) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp") and (pod.get("spec") or {}).get("nodeName"))
