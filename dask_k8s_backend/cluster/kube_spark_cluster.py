"""KubeSparkCluster: the notebook user's handle on Dask workers running as Kubernetes pods.

A thin layer over :class:`distributed.deploy.Cluster`. Everything interesting happens in the
scheduler process, in :class:`~dask_k8s_backend.backend.plugin.KubernetesSchedulerBackend`;
this class only

1. validates the configuration and the master URL, before anything is created (``cluster_options.py``),
2. connects to Kubernetes through the cluster-manager registry (``master.py``) and runs the
   preflight (``preflight.py``),
3. in client mode starts a Dask scheduler in this process with the backend plugin installed
   (``cluster_lifecycle.py``; in cluster mode the scheduler pod of ``cluster_mode.py``),
4. and forwards ``scale``/``scale_down``/``status``/``logs``/``close`` to the plugin's RPC
   handlers over ``scheduler_comm``, exactly as it would for a scheduler in a pod.

The methods here are the public API and the order of the steps; the steps themselves live in those
modules (and ``executor_logs.py``, ``status_view.py``, ``adaptive.py``, ``waiting.py``), which take the
cluster through small Protocols and never import this one.

After ``close()`` there is no scheduler to forward to: scaling, adapting and changing groups raise
:class:`ClusterClosedError` saying what to do, and the status view says the cluster is closed.

Written async-first; distributed's ``SyncMethodMixin`` gives the blocking API.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import weakref
from typing import Any

from distributed.core import Status, rpc
from tornado.ioloop import PeriodicCallback
from distributed.deploy.cluster import Cluster
from distributed.scheduler import Scheduler
from distributed.security import Security
from distributed.utils import Logs, in_async_call

from ..backend.allocation.groups import group_settings, validate_group_name
from ..config import Settings, load_settings
from ..kube.master import KubeConnection, resolve_manager
from ..pods.builder import check_executor_pod
from .adaptive import RemoteAdaptive, check_adapt_bounds, start_adaptive
from .cluster_lifecycle import (attach_to_running_scheduler, guarded, reap_pods, shutdown_backend,
                                start_local_scheduler, start_tls, what_close_left)
from .cluster_mode import start_cluster_mode, delete_scheduler_pod
from .cluster_options import (check_group_template_image, flatten_overrides, group_options, kwargs_to_overrides,
                              new_app_spec, refuse_outliving_embedded, validate_group_image, validate_worker_count)
from .executor_logs import executor_log, worker_logs
from .preflight import check_cluster, check_worker_group, warn_before_scale
from .preflight_access import Permission
from .preflight_policies import group_argument
from .status_view import ClusterStatus, format_status_table, render_cluster_status_html, render_scaling_status_html
from .tls_secret import delete_tls_secret
from .waiting import wait_for_workers

logger = logging.getLogger(__name__)

STATUS_REFRESH_MS = 500
DISPLAY_REFRESH_TIMEOUT = 5  # seconds a notebook's repr may wait for the backend before showing the last poll


class ClusterClosedError(RuntimeError):
    """A closed cluster was asked to scale, adapt or change its groups; the message says what to do instead."""


class KubeSparkCluster(Cluster):
    """Dask workers as Kubernetes pods, allocated and replaced the way Spark manages executors.

    >>> cluster = KubeSparkCluster()                      # embedded Kubernetes, no setup
    >>> cluster = KubeSparkCluster(master="k8s://https://host:443", image="ghcr.io/dask/dask")
    >>> client = Client(cluster); cluster.scale(10)       # or cluster.adapt(minimum=0, maximum=50)

    Every argument left at None takes its ``k8s-backend.*`` configuration value; all of them are
    validated before anything is created (a bad value raises ``ValueError`` naming the key).

    Args:
        master: ``embedded://`` (the default), ``k8s://https://host:port``, several API servers
            separated by commas, or ``k8s://`` for the kubeconfig or in-cluster account
            (``k8s-backend.master``).
        name: application name; pod names derive from it (``k8s-backend.name``; None: ``dask-<random>``).
        namespace: namespace of the worker pods (``k8s-backend.namespace``).
        image: container image of the workers, and of the scheduler in cluster mode (``k8s-backend.image``).
        n_workers: workers of the default group to start with (``scale(n_workers)`` once started).
        worker_cores: threads per worker and the pod's cpu request (``k8s-backend.worker.cores``).
        worker_memory: memory of each worker, e.g. ``"2GiB"`` (``k8s-backend.worker.memory``).
        env: environment variables of the worker containers (``k8s-backend.worker.env``).
        labels: extra labels of the worker pods (``k8s-backend.worker.labels``).
        annotations: extra annotations of the worker pods (``k8s-backend.worker.annotations``).
        node_selector: nodeSelector of the worker pods (``k8s-backend.worker.node-selector``).
        tolerations: tolerations of the worker pods (``k8s-backend.worker.tolerations``).
        service_account: service account of the worker pods, and of the scheduler pod in cluster mode
            (``k8s-backend.worker.service-account``).
        pod_template: path of a pod template file, or the template itself as a dict
            (``k8s-backend.worker.pod-template``).
        deploy_mode: ``"client"`` (the scheduler runs in this process) or ``"cluster"`` (in a pod)
            (``k8s-backend.deploy-mode``).
        asynchronous: use the cluster from async code (``await KubeSparkCluster(..., asynchronous=True)``).
        loop: the event loop to run on, as for any distributed cluster.
        quiet: do not print the cluster's log lines.
        shutdown_on_close: ``close()`` deletes the workers (and the scheduler pod); in cluster mode False
            only disconnects, and ``from_name`` reconnects later.
        **config: any other option, as a section mapping (``worker={"memory": "2GiB"}``) or a top-level
            key (``image_pull_policy="Always"``); underscores stand for dashes.
    """

    def __init__(
        self,
        master: str | None = None,
        name: str | None = None,
        namespace: str | None = None,
        image: str | None = None,
        n_workers: int = 0,
        worker_cores: float | None = None,
        worker_memory: str | int | None = None,
        env: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        node_selector: dict[str, str] | None = None,
        tolerations: list[dict[str, Any]] | None = None,
        service_account: str | None = None,
        pod_template: str | dict | None = None,
        deploy_mode: str | None = None,
        asynchronous: bool = False,
        loop: Any = None,
        quiet: bool = False,
        shutdown_on_close: bool = True,
        _attach: bool = False,
        **config: Any,
    ) -> None:
        self._n_workers = validate_worker_count(n_workers, "KubeSparkCluster(n_workers=...)")
        overrides = kwargs_to_overrides(
            master=master, namespace=namespace, image=image, name=name, deploy_mode=deploy_mode,
            worker_cores=worker_cores, worker_memory=worker_memory, env=env, labels=labels,
            annotations=annotations, node_selector=node_selector, tolerations=tolerations,
            service_account=service_account,
            pod_template=pod_template if not isinstance(pod_template, dict) else None,
        )
        # Validate everything before anything is created: a bad value raises here.
        self.overrides = {**flatten_overrides(config), **overrides}
        self.settings: Settings = load_settings(self.overrides)
        self._pod_template = pod_template if isinstance(pod_template, dict) else None
        self._manager = resolve_manager(self.settings.master)
        self.app = new_app_spec(self.settings)
        self.shutdown_on_close = shutdown_on_close
        self._attach = _attach
        if not _attach:
            refuse_outliving_embedded(self.settings, shutdown_on_close)
        if not _attach:  # a bad template or worker setting fails now, before anything is created
            check_executor_pod(app=self.app, settings=self.settings, template=self._pod_template)
        self.connection: KubeConnection | None = None
        self.scheduler: Scheduler | None = None
        self._status_cache: ClusterStatus = ClusterStatus.empty(self.app)
        self.pods_left_after_close = -1  # counted through the API by close()
        # optional permissions the preflight found missing (warned once); the features needing them say so
        self.missing_optional_permissions: tuple[Permission, ...] = ()
        self.security = Security()  # replaced by the app's own TLS Security when security.tls is set
        self._tls_secret = False
        self._group_adaptives: dict[str, Any] = {}
        self._status_pane: Any = None  # the live widget's Status pane, once distributed built the widget
        # name -> (settings, template) of the groups this client added: their pods' quota checks
        self._group_recipes: dict[str, tuple[Settings, dict | None]] = {}
        super().__init__(asynchronous=asynchronous, loop=loop, quiet=quiet, name=self.app.app_name)
        self._pod_reaper: weakref.finalize | None = None
        if not self.called_from_running_loop:
            self._loop_runner.start()
            try:
                self.sync(self._start)
            except BaseException:
                self.close()
                raise

    # ------------------------------------------------------------------ start / close
    def __await__(self):
        async def _() -> KubeSparkCluster:
            if self.status == Status.created:
                try:
                    await self._start()
                except BaseException:
                    await self._close()
                    raise
            return self

        return _().__await__()

    async def _start(self) -> None:
        if self.status != Status.created:
            return
        self.status = Status.starting
        self.connection = await asyncio.to_thread(self._manager.connect, self.settings.master, self.settings)
        if not self._attach:  # RBAC, namespace, quotas: fail here, before anything is created
            await check_cluster(self)
        if self._attach:
            address = await self._attach_to_running_scheduler()
        elif self.settings.deploy_mode == "cluster":
            address = await start_cluster_mode(self)
        else:
            address = await self._start_local_scheduler()
        self.scheduler_comm = rpc(address, connection_args=self.security.get_connection_args("client"))
        if self.shutdown_on_close:
            # An unclosed cluster still deletes its pods when collected or at interpreter exit (weakref.finalize
            # runs at exit too); the callback holds only what deletion needs, never self.
            self._pod_reaper = weakref.finalize(self, reap_pods, self.connection, self.app.namespace, self.app.app_id)
        # Adaptive reads plan/requested/observed each tick: keep the executors' view fresh.
        self.periodic_callbacks["k8s-status"] = PeriodicCallback(self._refresh_status_quietly, STATUS_REFRESH_MS)
        await super()._start()
        self._log(f"KubeSparkCluster {self.app.app_name} ({self.app.app_id}) on {self.connection.master}")
        if self._n_workers:
            await self._scale(self._n_workers)

    async def _start_local_scheduler(self) -> str:
        return await start_local_scheduler(self)

    async def _start_tls(self) -> str:
        """Generate this app's certificates, store them in its Secret for the pods; returns "tls"."""
        return await start_tls(self)

    @classmethod
    def from_name(
        cls, name: str, master: str | None = None, namespace: str | None = None, asynchronous: bool = False,
        shutdown_on_close: bool = True, **config: Any,
    ) -> KubeSparkCluster:
        """Reconnect to a running cluster-mode cluster called ``name`` (its scheduler runs in a pod)."""
        return cls(
            master=master, name=name, namespace=namespace, deploy_mode="cluster", asynchronous=asynchronous,
            shutdown_on_close=shutdown_on_close, _attach=True, **config,
        )

    async def _attach_to_running_scheduler(self) -> str:
        return await attach_to_running_scheduler(self)

    async def _close(self) -> None:
        if self.status in (Status.closed, Status.closing):
            return
        was_running = self.status == Status.running
        # A cluster that failed to start removes whatever it created, whatever shutdown_on_close says.
        shutdown = self.shutdown_on_close or not was_running
        self._forget_adaptives()
        if was_running and shutdown and self.scheduler_comm is not None:
            await shutdown_backend(self)
        if self._tls_secret and shutdown and self.connection is not None:
            await guarded("deleting the TLS secret",
                          asyncio.to_thread(delete_tls_secret, self.connection.api_client, self.app))
        if shutdown and self.settings.deploy_mode == "cluster" and self.connection is not None and not self._attach_failed():
            await guarded("deleting the scheduler pod", delete_scheduler_pod(self))
        await super()._close()
        self.status = Status.closing
        if self.scheduler is not None:
            await guarded("closing the scheduler", self.scheduler.close())
        if self.connection is not None and (shutdown or self.connection.embedded is None):
            await guarded("closing the Kubernetes connection", asyncio.to_thread(self.connection.close))
        self.status = Status.closed
        self._status_cache = self._status_cache.after_close(what_close_left(self, shutdown))
        self.scheduler_info = {"workers": {}}  # the last poll's workers are gone with the scheduler
        self._refresh_widget_after_close()
        if self._pod_reaper is not None and (shutdown or not self.shutdown_on_close):
            self._pod_reaper.detach()  # closed properly (or deliberately left running)

    def _refuse_if_closed(self, what: str) -> None:
        """A closed cluster has no scheduler to ask: say so, instead of an RPC error about a closed comm."""
        if self.status in (Status.closing, Status.closed):
            raise ClusterClosedError(f"{what}: this cluster is closed (KubeSparkCluster {self.app.app_name!r}, app "
                                     f"{self.app.app_id}): {self._status_cache.closed or 'it is closing'}.")

    def _attach_failed(self) -> bool:
        """from_name found no scheduler: there is nothing of ours to delete."""
        return self._attach and self.scheduler_comm is None

    def keep_log(self, message: str) -> None:
        """Keep a message that was already logged in ``get_logs()`` without printing it again
        (``Cluster._log`` prints too, so a logged warning would be shown twice)."""
        self._cluster_manager_logs.append((datetime.datetime.now(), message))

    # ------------------------------------------------------------------ scaling
    def scale(self, n: int = 0, group: str = "default", memory: Any = None, cores: Any = None) -> Any:
        """Ask for ``n`` workers (of ``group``); pods are created or retired-then-deleted to match."""
        self._refuse_if_closed(f"scale({n!r})")
        validate_worker_count(n, "KubeSparkCluster.scale(n)")
        if memory is not None or cores is not None:
            raise ValueError(
                "KubeSparkCluster.scale(memory=..., cores=...) is not supported: set worker_memory/"
                "worker_cores on the cluster, or use a worker group with its own resources"
            )
        return self.sync(self._scale, n, group)

    async def _scale(self, n: int, group: str = "default") -> None:
        await warn_before_scale(self, n, group)  # logs when the quota cannot hold the new pods
        await self.scheduler_comm.k8s_request_total_executors(n=n, group=group)  # type: ignore[union-attr]
        await self._refresh_status()

    def scale_up(self, n: int, group: str = "default") -> Any:
        return self.scale(n, group=group)

    def scale_down(self, workers: Any) -> Any:
        """Retire these workers (names = executor ids, or addresses), then delete their pods."""
        self._refuse_if_closed("scale_down(...)")
        return self.sync(self._scale_down, list(workers))

    async def _scale_down(self, workers: list[Any]) -> None:
        await self.scheduler_comm.k8s_kill_executors(workers=[str(w) for w in workers])  # type: ignore[union-attr]
        await self._refresh_status()

    # ------------------------------------------------------------------ worker groups and adapt
    def add_worker_group(
        self, name: str, *, worker_cores: float | None = None, worker_memory: str | int | None = None,
        resources: dict[str, float] | None = None, node_selector: dict[str, str] | None = None,
        tolerations: list[dict[str, Any]] | None = None, pod_template: str | dict | None = None,
        env: dict[str, str] | None = None, labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None, image: str | None = None,
        cores: float | None = None, memory: str | int | None = None,
    ) -> Any:
        """Add a group of workers with their own resources and image (scale it with ``scale(n, group=name)``).

        The arguments are the constructor's (``worker_cores``, ``worker_memory``, ``env``, ...), so a
        group reads like a cluster; ``image`` gives the group's pods their own image, as the Dask
        operator's worker groups do. ``cores``/``memory`` are the old names, deprecated.
        """
        self._refuse_if_closed(f"add_worker_group({name!r}, ...)")
        validate_group_name(name)
        explicit = group_options(name, dict(
            worker_cores=worker_cores, worker_memory=worker_memory, resources=resources, node_selector=node_selector,
            tolerations=tolerations, pod_template=pod_template, env=env, labels=labels, annotations=annotations,
        ), {"cores": cores, "memory": memory})
        worker_overrides = {k.split(".", 1)[1]: v for k, v in self.overrides.items() if k.startswith("worker.")}
        worker_overrides.update(explicit)
        image = validate_group_image(name, image)
        settings = group_settings(self.settings, worker_overrides, image)  # validates before anything is created
        template = pod_template if isinstance(pod_template, dict) else None
        check_group_template_image(name, image, template, settings)
        pod = check_executor_pod(app=self.app, settings=settings, template=template)
        return self.sync(self._add_worker_group, name, worker_overrides, template, settings, pod, explicit, image)

    async def _add_worker_group(self, name: str, worker_overrides: dict[str, Any], template: dict | None,
                                settings: Settings, pod: dict, explicit: dict[str, Any], image: str | None) -> None:
        await check_worker_group(self, name, pod, settings, explicit)  # LimitRange/quota: before anything exists
        await self.scheduler_comm.k8s_add_worker_group(  # type: ignore[union-attr]
            name=name, worker_overrides=worker_overrides, template=template, image=image)
        self._group_recipes[name] = (settings, template)
        await self._refresh_status()

    def remove_worker_group(self, name: str) -> Any:
        """Retire and delete the group's workers, then forget the group."""
        self._refuse_if_closed(f"remove_worker_group({name!r})")
        adaptive = self._group_adaptives.pop(name, None)
        if adaptive is not None and not isinstance(adaptive, RemoteAdaptive):
            adaptive.stop(reason="group removed")  # a loop in this process; the backend stops its own
        return self.sync(self._remove_worker_group, name)

    async def _remove_worker_group(self, name: str) -> None:
        await self.scheduler_comm.k8s_remove_worker_group(name=name)  # type: ignore[union-attr]
        self._group_recipes.pop(name, None)
        await self._refresh_status()

    def adapt(self, Adaptive: Any = None, *, minimum: int = 0, maximum: int | float = math.inf,
              group: str = "default", scale_down_window: float | str | None = None, interval: float | str | None = None,
              wait_count: int | None = None, target_duration: float | str | None = None, **kwargs: Any) -> Any:
        """Adaptive scaling of one group (default: the default group) between minimum and maximum.

        The loop runs beside the scheduler, in the backend (so a cluster-mode cluster keeps scaling with no
        client connected): scale-up is immediate, scale-down waits until the highest target recommended
        within ``scale_down_window`` (default ``k8s-backend.adaptive.scale-down-window``, 30 s) comes down,
        so short idle gaps between bursts keep their workers. ``interval``, ``wait_count`` and
        ``target_duration`` are distributed's Adaptive options. An ``Adaptive`` class of your own runs in
        this process instead, as with any distributed cluster.
        """
        self._refuse_if_closed(f"adapt(minimum={minimum!r}, maximum={maximum!r})")
        check_adapt_bounds(minimum, maximum)
        previous = self._group_adaptives.pop(group, None)
        if previous is not None and not isinstance(previous, RemoteAdaptive):
            previous.stop(reason="replaced")
        adaptive = start_adaptive(self, group, Adaptive, minimum=minimum, maximum=maximum,
                                  scale_down_window=scale_down_window, interval=interval, wait_count=wait_count,
                                  target_duration=target_duration, kwargs=kwargs)
        self._group_adaptives[group] = adaptive
        if group == "default":
            self._adaptive = adaptive
        if maximum != math.inf:
            self._warn_before_adapt(int(maximum), group)
        return adaptive

    def _forget_adaptives(self) -> None:
        """At close: loops in this process stop; the backend's keep running while their scheduler lives
        (shutdown stops them with it; cluster mode with shutdown_on_close=False keeps scaling)."""
        for adaptive in list(self._group_adaptives.values()):
            if not isinstance(adaptive, RemoteAdaptive):
                adaptive.stop(reason="cluster closing")
        self._group_adaptives.clear()
        self._adaptive = None

    async def _start_adapt(self, group: str, options: dict[str, Any]) -> None:
        await self.scheduler_comm.k8s_adapt(group=group, **options)  # type: ignore[union-attr]
        await self._refresh_status()

    async def _stop_adapt(self, group: str) -> None:
        await self.scheduler_comm.k8s_adapt_stop(group=group)  # type: ignore[union-attr]
        await self._refresh_status()

    def _warn_before_adapt(self, maximum: int, group: str) -> None:
        """adapt(maximum=...) warns, as scale(n) does, when that many pods of the group cannot fit the quota."""
        asked = f"adapt(maximum={maximum}{group_argument(group)}) may need {{extra}} more worker pods"
        if self.asynchronous or self.called_from_running_loop:
            self.loop.add_callback(warn_before_scale, self, maximum, group, asked)  # logged when it answers
        else:
            self.sync(warn_before_scale, self, maximum, group, asked)

    # Adaptive's view of the cluster: planned, requested (pods that exist) and observed (registered).
    @property
    def plan(self) -> set[str]:
        return set(self._status_cache.planned_names())

    @property
    def requested(self) -> set[str]:
        return set(self._status_cache.requested_names())

    @property
    def observed(self) -> set[str]:
        return {str(d["name"]) for d in self.scheduler_info.get("workers", {}).values()}

    # ------------------------------------------------------------------ status / logs
    async def _refresh_status(self) -> ClusterStatus:
        if self._status_cache.closed:
            return self._status_cache  # nothing to ask any more; it says the cluster is closed
        raw = await self.scheduler_comm.k8s_status()  # type: ignore[union-attr]
        self._status_cache = ClusterStatus.from_dict(raw)
        return self._status_cache

    async def _refresh_status_quietly(self) -> None:
        if self.status != Status.running:
            return
        try:
            await self._refresh_status()
        except Exception as e:  # a transient RPC failure must not kill the periodic callback
            logger.debug("refreshing the executors' status failed: %s", e)

    def refresh_status(self) -> ClusterStatus:
        return self.sync(self._refresh_status)

    @property
    def status_table(self) -> str:
        """The terminal view: app, master, namespace, dashboard, a row per worker group and a table of executors."""
        return format_status_table(self._status_for_display(), dashboard=self._dashboard_or_none())

    def executors(self) -> list[dict[str, Any]]:
        return [dict(e) for e in self.refresh_status().executors]

    async def _wait_for_workers(self, n_workers: int = 0, timeout: float | None = None) -> None:
        await wait_for_workers(self, n_workers, timeout)

    def logs(self, executor_id: int | str, tail_lines: int | None = None) -> str:
        """The log of one executor pod (via pods/log)."""
        return self.sync(self._executor_log, executor_id, tail_lines)

    async def _executor_log(self, executor_id: int | str, tail_lines: int | None = None) -> str:
        return await executor_log(self, executor_id, tail_lines)

    async def _get_logs(self, cluster: bool = True, scheduler: bool = True, workers: Any = True) -> Logs:
        logs = await super()._get_logs(cluster=cluster, scheduler=scheduler, workers=False)
        logs.update(await worker_logs(self, workers))
        return logs

    # ------------------------------------------------------------------ display
    def _status_for_display(self) -> ClusterStatus:
        """Fresh from the backend when the caller may block (a notebook cell, a terminal); on the event loop
        (distributed's widget refresh) the periodic poll's, which is at most STATUS_REFRESH_MS old."""
        if self.status != Status.running or self.asynchronous or in_async_call(self.loop):
            return self._status_cache
        try:
            return self.sync(self._refresh_status, callback_timeout=DISPLAY_REFRESH_TIMEOUT)
        except Exception as e:  # the view still renders: with the last poll, and the error logged
            logger.debug("refreshing the status for display failed: %s", e)
            return self._status_cache

    def _dashboard_or_none(self) -> str | None:
        try:
            return self.dashboard_link
        except Exception:  # no scheduler address yet (starting) or dashboard disabled
            return None

    def _repr_html_(self, cluster_status: str | None = None) -> str:
        """distributed's cluster view (its template and look), with our app, groups and executors in its
        ``cluster_status`` slot, as LocalCluster fills it."""
        rows = render_cluster_status_html(self._status_for_display())
        return super()._repr_html_(cluster_status=rows + (cluster_status or ""))

    def _widget(self) -> Any:
        """distributed's live widget (Status and Scaling tabs, refreshed every cluster-repr-interval); we keep
        its Status pane to show the closed view once, since the refresh stops with the cluster."""
        widget = super()._widget()
        if widget is not None and self._status_pane is None:
            self._status_pane = widget.children[0]
        return widget

    def _refresh_widget_after_close(self) -> None:
        if self._status_pane is not None:
            self._status_pane.value = self._repr_html_()

    def _scaling_status(self) -> str:
        """The widget's Scaling tab: each group's policy (adaptive bounds or a manual target)."""
        return render_scaling_status_html(self._status_cache)

    def __repr__(self) -> str:
        counts = self._status_cache.phase_counts()
        text = ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "no pods"
        if self._status_cache.closed:
            text = f"closed: {self._status_cache.closed}"
        return f"KubeSparkCluster({self.app.app_name!r}, master={self.settings.master!r}, {text}, status={self.status.name})"

