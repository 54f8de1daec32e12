"""Assembly of the scheduler-side backend: one app's store, sources, allocator and lifecycle.

``build_components(plugin)`` wires the pieces described in docs/contracts.md in their start
order (store, lifecycle, allocator, watch, polling) and ``BackendComponents`` gives the Dask
plugin one small surface over them: targets, kills, the executors it may admit, a status view,
and a shutdown that deletes every pod of the app and waits until the API confirms they are
gone. The rules stay in the components; this module only connects them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

from .. import labels
from ..clock import Clock, SystemClock
from ..config import Settings
from ..kube.master import KubeConnection
from ..kube.pod_api import KubePodApi
from ..pods.app_spec import AppSpec
from .allocation.allocator import ExecutorPodsAllocator
from .executors.failures import FailureTracker
from .executors.kept_logs import KeptLogs
from .executors.lifecycle import ExecutorPodsLifecycleManager
from .heartbeat import AppHeartbeat, LeaseApi
from .observation.nodes import LostNodePods, NodeCapacity
from .observation.polling import ExecutorPodsPollingSource
from .observation.snapshots import SnapshotsStore, group_of_pod
from .observation.watch import ExecutorPodsWatchSource

if TYPE_CHECKING:
    from ..pods.states import PodState

logger = logging.getLogger(__name__)

SHUTDOWN_POLL = 0.2
KEEP_WAIT = 10.0  # how long shutdown waits for retired workers' pods to finish before keeping them
FINISHED = ("Succeeded", "Failed")


class ComponentsOwner(Protocol):
    """What :func:`build_components` reads of the scheduler plugin that owns the pieces (backend/plugin.py).

    Declared here, on the side that uses it, so that the plugin imports the components and not the reverse.
    """

    settings: Settings
    app: AppSpec
    connection: KubeConnection
    owner: dict | None

    def build_pod(self, executor_id: int, group: str) -> dict: ...

    def registered_executor_ids(self) -> set[int]: ...

    def on_pending_reason(self, executor_id: int, reason: str) -> None: ...

    async def on_executor_lost(self, executor_id: int, explanation: str) -> None: ...

    def on_failure_limit(self, group: str, message: str) -> None: ...


@dataclass
class BackendComponents:
    """The running pieces of one app's backend, owned by the scheduler plugin."""

    api: Any
    store: SnapshotsStore
    failures: FailureTracker
    allocator: ExecutorPodsAllocator
    lifecycle: ExecutorPodsLifecycleManager
    watch: ExecutorPodsWatchSource
    polling: ExecutorPodsPollingSource
    nodes: NodeCapacity
    heartbeat: AppHeartbeat
    selector: str
    clock: Clock
    keep_finished: bool = False  # executor.delete-on-termination false: finished pods outlive the app

    async def start(self) -> None:
        await self.heartbeat.start()  # the app's Lease exists before its first pod: it owns them
        self.nodes.start()
        self.lifecycle.start(self.store)
        self.allocator.start(self.store)
        self.watch.start()
        self.polling.start()

    # ------------------------------------------------------------------ targets and kills
    def set_target(self, n: int, group: str) -> None:
        self.allocator.set_target(n, group)

    def kill_executors(self, executor_ids: list[int]) -> None:
        if executor_ids:
            self.allocator.kill_executors(executor_ids)

    def alive_ids(self, group: str) -> set[int]:
        return self.allocator.alive_ids(group)

    def count_alive(self, group: str) -> int:
        return len(self.alive_ids(group))

    def group_of(self, executor_id: int) -> str | None:
        return self.allocator.group_of(executor_id)

    def targets(self) -> dict[str, int]:
        return self.allocator.targets()

    def outstanding(self) -> int:
        return self.allocator.outstanding()

    def pods_created(self) -> int:
        return self.allocator.pods_created

    def pod_name(self, executor_id: int) -> str | None:
        return self.allocator.pod_name(executor_id)

    def is_wanted(self, executor_id: int) -> bool:
        """May this executor's worker join? Only pods we created, not lost, deleting or killed."""
        state = self.allocator.state
        if self.allocator.pod_name(executor_id) is None:
            return False
        if executor_id in state.deleting or executor_id in state.kill_requested:
            return False
        if executor_id in self.lifecycle.lost_ids:
            return False
        current = self.store.current.executor_pods.get(executor_id)
        return current is None or not current.is_final

    # ------------------------------------------------------------------ status
    def describe_executors(self, describe: Callable[[int, PodState, str], dict[str, Any]]) -> list[dict[str, Any]]:
        pods = self.store.current.executor_pods
        described = [describe(i, state, group_of_pod(state.pod)) for i, state in sorted(pods.items())]
        for i, created in sorted(self.allocator.state.newly_created.items()):
            if i not in pods:  # asked for, not yet seen by the watch
                described.append({"id": i, "pod": created.name, "group": created.group, "phase": "Pending",
                                  "node": None, "ip": None, "worker": None, "created": None, "reason": ""})
        return described

    # ------------------------------------------------------------------ shutdown
    async def stop_loops(self) -> None:
        """Stop every loop in reverse start order; each step guarded so the next still runs."""
        for name, stop in (("polling", self.polling.stop), ("watch", self.watch.stop),
                           ("allocator", self.allocator.stop), ("store", self.store.stop), ("nodes", self.nodes.stop)):
            try:
                await stop()
            except Exception:
                logger.warning("stopping the %s failed", name, exc_info=True)

    async def shutdown(self, timeout: float) -> int:
        """Delete every pod of the app and wait until the API lists none; returns how many remain.

        With ``delete-on-termination: false`` the pods whose workers finished are labelled inactive and
        kept (as Spark keeps executor pods after the application), and only the others are deleted.
        A pod still terminating on a node that is NotReady, unreachable or gone is force-deleted
        (:class:`~.nodes.LostNodePods`): no kubelet would ever confirm its deletion.
        """
        await self.stop_loops()
        deadline = time.monotonic() + timeout
        selector = self.selector
        if self.keep_finished:
            await self._keep_finished_pods(min(deadline, time.monotonic() + KEEP_WAIT))
            selector = f"{self.selector},{labels.INACTIVE}!=true"
        remaining = -1
        lost_nodes = LostNodePods(self.api)
        while True:
            try:
                await self.api.delete_pods(selector)
                pods, _ = await self.api.list_pods(selector)
                remaining = len(pods)
                await lost_nodes.force_delete(pods)  # gone from the next list
            except Exception as e:
                logger.warning("deleting the pods of %s failed (%s); retrying until the deadline", self.selector, e)
            if remaining == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(SHUTDOWN_POLL)
        await self.heartbeat.stop(delete=not self.keep_finished)  # kept pods keep their (released) owner for gc
        try:
            await self.api.close()
        except Exception:
            logger.warning("closing the pod API failed", exc_info=True)
        return remaining

    async def _keep_finished_pods(self, until: float) -> None:
        """Wait (bounded) for retired workers' pods to finish, then label every finished pod inactive."""
        pods: list[dict] = []
        while True:
            try:
                pods, _ = await self.api.list_pods(self.selector)
            except Exception as e:
                logger.warning("listing the pods to keep failed (%s)", e)
            if time.monotonic() > until or not any(_phase(p) == "Running" for p in pods):
                break
            await asyncio.sleep(SHUTDOWN_POLL)
        for pod in pods:
            if _phase(pod) in FINISHED and (pod["metadata"].get("labels") or {}).get(labels.INACTIVE) != "true":
                try:
                    await self.api.patch_pod_labels(pod["metadata"]["name"], {labels.INACTIVE: "true"})
                except Exception as e:
                    logger.warning("labelling pod %s inactive failed (%s); it is deleted", pod["metadata"]["name"], e)


def _phase(pod: dict) -> str:
    return (pod.get("status") or {}).get("phase") or "Pending"


def build_components(plugin: ComponentsOwner, clock: Clock | None = None) -> BackendComponents:
    """Wire one app's backend from the plugin's settings, connection and callbacks."""
    settings = plugin.settings
    clock = clock or SystemClock()
    selector = labels.app_selector(plugin.app.app_id)
    api = KubePodApi(plugin.connection.api_client, plugin.app.namespace, request_timeout=settings.api.request_timeout,
                      connect_timeout=settings.api.connection_timeout)
    store = SnapshotsStore(clock=clock)
    failures = FailureTracker(settings=settings.executor, clock=clock, on_failure_limit=plugin.on_failure_limit)
    kept_logs = KeptLogs(per_executor=settings.executor.kept_log_bytes, total=settings.executor.kept_logs_total)
    lifecycle = ExecutorPodsLifecycleManager(
        api=api, settings=settings.executor, failures=failures, clock=clock,
        on_executor_lost=plugin.on_executor_lost, known_executors=plugin.registered_executor_ids, kept_logs=kept_logs,
    )
    nodes = NodeCapacity(api=api, clock=clock)
    heartbeat = AppHeartbeat(
        api=LeaseApi(plugin.connection.api_client, plugin.app.namespace, request_timeout=settings.api.request_timeout),
        app=plugin.app, clock=clock, interval=settings.scheduler.lease_renew_interval,
        duration=settings.scheduler.lease_duration, owner=plugin.owner,
    )
    allocator = ExecutorPodsAllocator(
        api=api, settings=settings.allocation, pod_factory=plugin.build_pod, failures=failures, clock=clock,
        known_executors=plugin.registered_executor_ids, on_pending_reason=plugin.on_pending_reason,
        delete_grace_period=settings.executor.delete_grace_period, nodes=nodes.current,
    )
    watch = ExecutorPodsWatchSource(api, store, selector, clock)
    polling = ExecutorPodsPollingSource(api, store, selector, clock, interval=settings.executor.api_polling_interval)
    return BackendComponents(api=api, store=store, failures=failures, allocator=allocator, lifecycle=lifecycle,
                             watch=watch, polling=polling, nodes=nodes, heartbeat=heartbeat, selector=selector, clock=clock,
                             keep_finished=not settings.executor.delete_on_termination)
