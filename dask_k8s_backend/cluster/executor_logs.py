"""The workers' logs, for ``cluster.logs(executor_id)`` and ``cluster.get_logs()``.

Each log is read by the backend beside the scheduler (``k8s_logs`` over ``scheduler_comm``), from the
executor's pod or, for a pod already deleted, from what the backend kept (``k8s_kept_logs``). Reading pod
logs is an optional permission: when the preflight found it missing, or the API server answers 403, the
answer says which permission is missing and the Role granting it, instead of an RPC error. Data flow::

    get_logs() ─> log_sources (executor id -> pod: current pods + kept logs)
               ─> executor_log per executor, or one line saying why there is none (log_or_reason)

The functions take the cluster through :class:`LoggingCluster`, declared here so that this module needs
no import of the class.
"""

from __future__ import annotations

from typing import Any, Protocol

from distributed.utils import Log

from ..kube.errors import Forbidden
from ..pods.builder import AppSpec
from .preflight_access import POD_LOGS, Permission, feature_refusal
from .status_view import ClusterStatus


class LoggingCluster(Protocol):
    """What reading logs uses of a KubeSparkCluster, declared here so that this module needs no import of it."""

    app: AppSpec
    scheduler_comm: Any
    missing_optional_permissions: tuple[Permission, ...]

    async def _refresh_status(self) -> ClusterStatus: ...


async def executor_log(cluster: LoggingCluster, executor_id: int | str, tail_lines: int | None = None) -> str:
    """``cluster.logs(executor_id)``: the executor pod's log, or the refusal naming the missing permission."""
    what = f"cluster.logs({executor_id!r})"
    if POD_LOGS in cluster.missing_optional_permissions:  # the preflight knew: say it without asking again
        raise feature_refusal(what, "read pod logs", POD_LOGS, cluster.app.namespace)
    try:
        answer = await cluster.scheduler_comm.k8s_logs(executor_id=str(executor_id), tail_lines=tail_lines)  # type: ignore[union-attr]
    except Forbidden as e:  # the preflight could not ask (or the scheduler pod's account lacks it)
        raise feature_refusal(what, "read pod logs", POD_LOGS, cluster.app.namespace) from e
    if "missing" in answer:
        raise KeyError(answer["missing"])
    return answer["log"]


async def worker_logs(cluster: LoggingCluster, workers: Any) -> dict[str, Log]:
    """``get_logs(workers=...)``'s part: pod name -> log (``workers`` True for all, or executor ids)."""
    logs: dict[str, Log] = {}
    if workers and POD_LOGS in cluster.missing_optional_permissions:
        logs["workers"] = Log(str(feature_refusal("get_logs()", "read pod logs", POD_LOGS, cluster.app.namespace)))
    elif workers:
        for executor_id, pod in (await log_sources(cluster)).items():
            if workers is not True and executor_id not in {str(w) for w in workers}:
                continue
            logs[pod] = Log(await log_or_reason(cluster, executor_id))
    return logs


async def log_sources(cluster: LoggingCluster) -> dict[str, str]:
    """Executor id -> pod name: the current pods and those whose logs were kept after deletion."""
    status = await cluster._refresh_status()
    sources = await cluster.scheduler_comm.k8s_kept_logs()  # type: ignore[union-attr]
    sources.update({str(e["id"]): e["pod"] for e in status.executors})
    return dict(sorted(sources.items(), key=lambda item: int(item[0])))


async def log_or_reason(cluster: LoggingCluster, executor_id: str) -> str:
    """A log, or one line saying why there is none (a pod removed by scale-down has none): no traceback."""
    try:
        return await executor_log(cluster, executor_id)
    except Exception as e:
        return f"(no log for executor {executor_id}: {e})"
