"""KubernetesSchedulerBackend: the executor-pod backend living inside the Dask scheduler.

Data flow::

    watch source ─┐                      ┌─> allocator   (target -> pod creations/deletions)
                  ├─> SnapshotsStore ────┤
    polling src ──┘                      ├─> lifecycle   (final states -> remove worker, delete pod)
                                         └─> this plugin (latest snapshot for status/gatekeeping)

The plugin owns those components, adds scheduler RPC handlers (``k8s_request_total_executors``,
``k8s_kill_executors``, ``k8s_status``, ``k8s_logs``, ``k8s_shutdown``) that
:class:`~dask_k8s_backend.cluster.kube_spark_cluster.KubeSparkCluster` calls over ``scheduler_comm``, and guards
worker registration: a worker's name is its executor id, and a worker whose executor is
unknown, excluded or being deleted is refused. Everything runs on the scheduler's event loop;
Kubernetes calls are asynchronous (``KubePodApi`` runs the blocking client in threads).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from .. import labels
from ..config import Settings
from ..kube.errors import NotFound
from ..kube.master import KubeConnection
from ..pods.builder import AppSpec, build_executor_pod
from ..pods.exits import explain, pending_reason
from ..pods.states import PodDeleted, PodFailed, PodPending, PodRunning, PodState, PodSucceeded, PodTerminating
from .allocation.autoscaling import Autoscalers
from .allocation.groups import GroupRegistry, WorkerGroup, demand_by_group, group_settings, validate_group_name
from .allocation.stranded import StrandedTasks, killed_worker_note
from .components import BackendComponents, build_components
from .gatekeeper import RegistrationGatekeeper
from .metrics import BackendMetrics, start_metrics, stop_metrics

logger = logging.getLogger(__name__)

PHASE_NAMES: dict[type, str] = {
    PodPending: "Pending",
    PodRunning: "Running",
    PodTerminating: "Terminating",
    PodSucceeded: "Succeeded",
    PodFailed: "Failed",
    PodDeleted: "Deleted",
}
MAX_EVENTS = 200


class KubernetesSchedulerBackend(SchedulerPlugin):
    """Spark's KubernetesClusterSchedulerBackend as a Dask scheduler plugin."""

    name = "k8s-backend"

    def __init__(
        self,
        *,
        settings: Settings,
        app: AppSpec,
        connection: KubeConnection,
        pod_template: dict | None = None,
        owner: dict | None = None,
    ) -> None:
        self.settings = settings
        self.app = app
        self.connection = connection
        self.pod_template = pod_template
        self.owner = owner
        self.scheduler: Any = None
        self.components: BackendComponents | None = None
        self.groups = GroupRegistry(WorkerGroup(labels.DEFAULT_GROUP, settings, pod_template))
        self.gatekeeper = RegistrationGatekeeper(self)
        self.events: deque[str] = deque(maxlen=MAX_EVENTS)
        self.errors: dict[str, str] = {}  # group -> why it stopped creating pods
        self.explanations: dict[int, str] = {}
        self.autoscalers = Autoscalers(self)  # adapt() runs here, beside the scheduler
        self.metrics: BackendMetrics | None = None
        self.stranded: StrandedTasks | None = None
        self._closing = False

    # ------------------------------------------------------------------ plugin hooks
    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        scheduler.handlers.update(
            {
                "k8s_request_total_executors": self.request_total_executors,
                "k8s_kill_executors": self.kill_executors,
                "k8s_status": self.status,
                "k8s_logs": self.executor_log_answer,
                "k8s_kept_logs": self.kept_logs,
                "k8s_shutdown": self.shutdown,
                "k8s_add_worker_group": self.add_worker_group,
                "k8s_remove_worker_group": self.remove_worker_group,
                "k8s_adaptive_target": self.adaptive_target,
                "k8s_workers_to_close": self.workers_to_close,
            }
        )
        scheduler.handlers.update(self.autoscalers.handlers())  # k8s_adapt, k8s_adapt_stop
        self.gatekeeper.install(scheduler)
        self.components = build_components(self)
        self.stranded = StrandedTasks(scheduler=scheduler, groups=self.groups, blocked=self.blocked_groups,
                                      connected_groups=self.connected_groups,
                                      say=lambda message: self.record(message, logging.ERROR))
        self.metrics = start_metrics(app_id=self.app.app_id, scheduler=scheduler, components=self.components)
        await self.components.start()
        logger.info("k8s backend started for app %s in namespace %s", self.app.app_id, self.app.namespace)

    async def close(self) -> None:
        await self.shutdown(timeout=30)

    # ------------------------------------------------------------------ callbacks from components
    def scheduler_address(self) -> str:
        return self.scheduler.address

    def build_pod(self, executor_id: int, group: str) -> dict:
        recipe = self.groups[group]
        if self.metrics is not None:
            self.metrics.note_requested(executor_id, group)  # the allocator creates it next: time to Running starts
        return build_executor_pod(
            executor_id=executor_id,
            app=self.app,
            settings=recipe.settings,
            scheduler_address=self.scheduler_address(),
            group=group,
            template=recipe.template,
            owner=self.owner,
            app_owners=self.components.heartbeat.owner_references(controller=self.owner is None) if self.components else (),
        )

    def registered_executor_ids(self) -> set[int]:
        """Executors the scheduler knows as workers (the allocator deletes unknown pending pods first)."""
        ids = set()
        for ws in self.scheduler.workers.values():
            try:
                ids.add(int(ws.name))
            except (TypeError, ValueError):
                continue
        return ids

    def worker_address(self, executor_id: int) -> str | None:
        """The registered worker of an executor (dask turns numeric worker names into ints)."""
        aliases = self.scheduler.aliases
        return aliases.get(executor_id) or aliases.get(str(executor_id))

    def record(self, message: str, level: int = logging.INFO) -> None:
        """A user-visible event: logged once at ``level``, kept for ``status`` and sent to the scheduler's
        event log. Callers do not log it themselves: each message is printed once."""
        self.events.append(message)
        logger.log(level, "%s", message)
        if self.scheduler is not None:
            self.scheduler.log_event("k8s-backend", {"action": "k8s-event", "message": message})

    def on_pending_reason(self, executor_id: int, reason: str) -> None:
        self.record(f"executor {executor_id} is pending: {reason}", logging.WARNING)

    async def on_executor_lost(self, executor_id: int, explanation: str) -> None:
        """A pod reached a final state: remove its worker from the scheduler with the explanation."""
        self.explanations[executor_id] = explanation
        self.record(f"executor {executor_id} lost: {explanation}")
        address = self.worker_address(executor_id)
        if address is not None and address in self.scheduler.workers:
            await self.scheduler.remove_worker(
                address=address, stimulus_id=f"k8s-executor-lost-{executor_id}-{time.time()}", close=False
            )

    def on_failure_limit(self, group: str, message: str) -> None:
        self.errors[group] = message
        self.record(message, logging.ERROR)
        if self.stranded is not None:
            self.stranded.watch()  # tasks waiting for this group's workers fail with the message

    def blocked_groups(self) -> dict[str, str]:
        """Groups that stopped creating pods, with why (failures aged out of the window are not)."""
        components = self.components
        return {g: m for g, m in self.errors.items() if components is None or components.failures.is_blocked(g)}

    def connected_groups(self) -> set[str]:
        components = self._require_components()
        return {components.group_of(self._executor_id(ws.name)) or "" for ws in self.scheduler.workers.values()}

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        """A task distributed failed with KilledWorker: say what Kubernetes knows about its last pod."""
        if finish != "erred" or kwargs.get("exception") is None or self.components is None:
            return
        pods = self.components.store.current.executor_pods
        note = killed_worker_note(kwargs["exception"], self._executor_of_name, self.explanations.get,
                                  self.components.pod_name, lambda i: isinstance(pods.get(i), PodRunning))
        if note is not None:
            self.record(note, logging.WARNING)

    def _executor_of_name(self, name: Any) -> int | None:
        executor_id = self._executor_id(name)
        return executor_id if executor_id >= 0 else None

    # ------------------------------------------------------------------ RPC handlers
    async def request_total_executors(self, n: int, group: str = labels.DEFAULT_GROUP) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"scale(n): expected a whole number of workers >= 0, got {n!r}")
        self.groups[group]  # an unknown group raises a KeyError naming the existing ones
        components = self._require_components()
        excess = components.count_alive(group) - n
        if excess > 0:
            unregistered = components.alive_ids(group) - self.registered_executor_ids()
            victims = self._workers_by_retirement_order(group)[: max(0, excess - len(unregistered))]
            if victims:
                await self._retire(victims)
                components.kill_executors(victims)
        components.set_target(n, group)

    def _group_workers(self, group: str) -> list[Any]:
        components = self._require_components()
        return [ws for ws in self.scheduler.workers.values() if components.group_of(self._executor_id(ws.name)) == group]

    def _workers_by_retirement_order(self, group: str, idle_only: bool = False) -> list[int]:
        """Idle workers holding the least data first, then the youngest busy ones (scale-down order)."""
        workers = [ws for ws in self._group_workers(group) if not (idle_only and ws.processing)]
        workers.sort(key=lambda ws: (bool(ws.processing), ws.nbytes, -self._executor_id(ws.name)))
        return [self._executor_id(ws.name) for ws in workers]

    # ------------------------------------------------------------------ worker groups
    def add_worker_group(self, name: str, worker_overrides: dict[str, Any], template: dict | None = None,
                         image: str | None = None) -> None:
        validate_group_name(name)
        # Dask's RPC hands lists over as tuples; restore plain JSON shapes before validating them.
        worker_overrides, template = json.loads(json.dumps([worker_overrides, template]))
        self.groups.add(WorkerGroup(name, group_settings(self.settings, worker_overrides, image), template))
        self.record(f"worker group {name!r} added")

    async def remove_worker_group(self, name: str) -> None:
        await self.autoscalers.stop(name)
        await self.request_total_executors(0, name)
        self.groups.remove(name)
        self.record(f"worker group {name!r} removed")

    def adaptive_target(self, group: str = labels.DEFAULT_GROUP, target_duration: float | None = None) -> int:
        """Workers ``group`` should have: resource groups follow the demand for their resources."""
        recipe = self.groups[group]
        if recipe.resources:
            waiting = (ts for ts in self.scheduler.tasks.values() if ts.state in ("processing", "no-worker"))
            return demand_by_group(self.groups, waiting).get(group, 0)
        return self.scheduler.adaptive_target(target_duration=target_duration)

    def workers_to_close(self, group: str = labels.DEFAULT_GROUP, target: int = 0) -> list[str]:
        """Idle workers of ``group`` above ``target`` (Adaptive retires them, then calls scale_down)."""
        idle = self._workers_by_retirement_order(group, idle_only=True)
        excess = len(self._group_workers(group)) - target
        return [str(i) for i in idle[: max(0, excess)]]

    @staticmethod
    def _executor_id(name: Any) -> int:
        try:
            return int(name)
        except (TypeError, ValueError):
            return -1

    async def _retire(self, executor_ids: list[int]) -> None:
        names = [str(i) for i in executor_ids if self.worker_address(i) is not None]
        if names:
            await self.scheduler.retire_workers(names=names, close_workers=True, remove=True, stimulus_id=f"k8s-scale-down-{time.time()}")

    async def kill_executors(self, workers: list[str]) -> None:
        """Retire (so their data moves) and then delete the pods of these workers (names or addresses)."""
        components = self._require_components()
        ids = []
        for w in workers:
            ws = self.scheduler.workers.get(w)
            ids.append(self._executor_id(ws.name if ws is not None else w))
        ids = [i for i in ids if i >= 0]
        await self._retire(ids)
        self._lower_targets_for(ids, components)
        components.kill_executors(ids)

    def _lower_targets_for(self, executor_ids: list[int], components: BackendComponents) -> None:
        """Killing live executors on request shrinks their groups' targets (Spark's adjustTargetNumExecutors),
        so they are not replaced."""
        killed: dict[str, int] = {}
        for executor_id in executor_ids:
            group = components.group_of(executor_id)
            if group is not None and executor_id in components.alive_ids(group):
                killed[group] = killed.get(group, 0) + 1
        targets = components.targets()
        for group, count in killed.items():
            components.set_target(max(0, targets.get(group, 0) - count), group)

    def status(self) -> dict[str, Any]:
        components = self.components
        executors = components.describe_executors(self._describe_state) if components else []
        pending = {str(e["id"]): e["reason"] for e in executors if e["phase"] == "Pending" and e.get("reason")}
        return {
            "app_id": self.app.app_id,
            "app_name": self.app.app_name,
            "namespace": self.app.namespace,
            "targets": components.targets() if components else {},
            "executors": executors,
            "outstanding": components.outstanding() if components else 0,
            "error": "; ".join(f"group {g!r}: {m}" if g != labels.DEFAULT_GROUP else m for g, m in sorted(self.errors.items())) or None,
            "errors": dict(self.errors),
            "pending_reasons": pending,
            "events": list(self.events)[-50:],
            "pods_created": components.pods_created() if components else 0,
            "adaptive": self.autoscalers.describe(),
            "master": self.connection.master,
            "groups": self.groups.names(),
            "failures": {g: components.failures.failure_count(g) for g in self.groups.names()} if components else {},
        }

    def _describe_state(self, executor_id: int, state: PodState, group: str) -> dict[str, Any]:
        pod = state.pod
        meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
        phase = PHASE_NAMES.get(type(state), "Unknown")
        if phase == "Pending":
            reason = pending_reason(pod) or ""
        elif state.is_final:
            reason = self.explanations.get(executor_id) or explain(state)
        else:
            reason = ""
        address = self.worker_address(executor_id) if self.scheduler else None
        return {
            "id": executor_id,
            "pod": meta.get("name", ""),
            "group": group,
            "phase": phase,
            "node": spec.get("nodeName"),
            "ip": status.get("podIP"),
            "worker": address,
            "created": _parse_timestamp(meta.get("creationTimestamp")),
            "reason": reason,
        }

    async def executor_log(self, executor_id: str, tail_lines: int | None = None) -> str:
        """The pod's log; once the pod is gone, the end of it the lifecycle manager kept."""
        components = self._require_components()
        executor = int(executor_id)
        name = components.pod_name(executor)
        kept_logs = components.lifecycle.kept_logs
        kept = kept_logs.get(executor) if kept_logs is not None else None
        if name is None and kept is None:
            raise KeyError(f"executor {executor_id} is unknown to app {self.app.app_id}")
        if kept is not None and executor in components.lifecycle.lost_ids:
            return _tail(kept.render(), tail_lines)
        try:
            return await components.api.read_pod_log(name, tail_lines=tail_lines)
        except NotFound:
            if kept is not None:
                return _tail(kept.render(), tail_lines)
            dropped = kept_logs is not None and executor in kept_logs.dropped
            raise KeyError(
                f"executor {executor_id}'s pod {name} is gone and its log was "
                + ("dropped to stay under k8s-backend.executor.kept-logs-total (the oldest go first)" if dropped else
                   "not kept (it was deleted before it finished, or k8s-backend.executor.kept-log-bytes is 0)")
            ) from None

    async def executor_log_answer(self, executor_id: str, tail_lines: int | None = None) -> dict[str, str]:
        """``k8s_logs``: ``{"log": ...}``, or ``{"missing": why}`` for an executor with no log to give.

        An executor can be listed by one status and gone without a kept log by the time its log is asked for
        (a scale-down deleting it in between); that is an answer, not an error for distributed to log with a
        traceback in the scheduler's log, so the caller raises the KeyError on its side.
        """
        try:
            return {"log": await self.executor_log(executor_id, tail_lines)}
        except KeyError as e:
            return {"missing": str(e.args[0]) if e.args else f"executor {executor_id} has no log"}

    def kept_logs(self) -> dict[str, str]:
        """Executors whose pods are gone but whose logs were kept -> pod names (for get_logs())."""
        components = self._require_components()
        kept = components.lifecycle.kept_logs
        return {str(i): pod for i, pod in kept.pods().items()} if kept is not None else {}

    async def shutdown(self, timeout: float = 60) -> dict[str, Any]:
        """Stop allocating, close workers, delete every pod of this app and wait until they are gone."""
        if self._closing or self.components is None:
            return {"remaining": 0}
        self._closing = True
        await self.autoscalers.stop_all()
        self.gatekeeper.close()
        if self.stranded is not None:
            await self.stranded.stop()
        components = self.components
        names = list(self.scheduler.aliases) if self.scheduler else []
        if names:
            try:
                await asyncio.wait_for(
                    self.scheduler.retire_workers(names=names, close_workers=True, remove=True, stimulus_id="k8s-shutdown"),
                    timeout=min(10, timeout),
                )
            except Exception:
                logger.warning("retiring workers at shutdown failed; deleting their pods anyway", exc_info=True)
        remaining = await components.shutdown(timeout=timeout)
        stop_metrics(self.app.app_id)
        return {"remaining": remaining}

    def _require_components(self) -> BackendComponents:
        if self.components is None or self._closing:
            raise RuntimeError(f"the Kubernetes backend of app {self.app.app_id} is not running (closed or not started)")
        return self.components


def _tail(text: str, lines: int | None) -> str:
    return text if lines is None else "\n".join(text.splitlines()[-lines:])


def _parse_timestamp(value: str | None) -> float | None:
    if not value:
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
