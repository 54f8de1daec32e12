"""KubeSparkCluster: the notebook user's handle on Dask workers running as Kubernetes pods.

A thin layer over :class:`distributed.deploy.Cluster`. Everything interesting happens in the
scheduler process, in :class:`~dask_k8s_backend.backend.plugin.KubernetesSchedulerBackend`;
this class only

1. validates the configuration and the master URL (before anything is created),
2. connects to Kubernetes through the cluster-manager registry (``master.py``),
3. in client mode starts a Dask scheduler in this process with the backend plugin installed,
4. and forwards ``scale``/``scale_down``/``status``/``logs``/``close`` to the plugin's RPC
   handlers over ``scheduler_comm``, exactly as it would for a scheduler in a pod.

Written async-first; distributed's ``SyncMethodMixin`` gives the blocking API.
"""

from __future__ import annotations

import asyncio
import math
import time
import logging
import uuid
import weakref
from contextlib import suppress
from typing import Any

from distributed.core import Status, rpc
from tornado.ioloop import PeriodicCallback
from distributed.deploy.cluster import Cluster
from distributed.scheduler import Scheduler
from distributed.security import Security
from distributed.utils import Log, Logs

from . import labels
from .config import Settings, load_settings
from .master import KubeConnection, resolve_manager
from .pods.builder import AppSpec, check_executor_pod
from .status_view import ClusterStatus, format_status_table, render_status_html

logger = logging.getLogger(__name__)

STATUS_REFRESH_MS = 500


def _kwargs_to_overrides(**kwargs: Any) -> dict[str, Any]:
    """Map the explicit constructor arguments to dotted configuration keys (None = unset)."""
    mapping = {
        "master": "master",
        "namespace": "namespace",
        "image": "image",
        "name": "name",
        "deploy_mode": "deploy-mode",
        "worker_cores": "worker.cores",
        "worker_memory": "worker.memory",
        "env": "worker.env",
        "labels": "worker.labels",
        "annotations": "worker.annotations",
        "node_selector": "worker.node-selector",
        "tolerations": "worker.tolerations",
        "service_account": "worker.service-account",
        "pod_template": "worker.pod-template",
    }
    return {mapping[k]: v for k, v in kwargs.items() if v is not None}


SECTIONS = ("scheduler", "worker", "allocation", "executor", "api", "authenticate", "security")


def flatten_overrides(config: dict[str, Any]) -> dict[str, Any]:
    """{"worker": {"memory": "2GiB"}, "image_pull_policy": "Always"} -> dotted kebab-case keys.

    Only the configuration's sections are descended into: mapping-valued options such as
    ``worker.env`` stay whole.
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        key = key.replace("_", "-")
        if key in SECTIONS and isinstance(value, dict):
            flat.update({f"{key}.{k.replace('_', '-')}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def _validate_worker_count(value: Any, option: str) -> int:
    """Worker counts must be whole numbers >= 0; reject before anything is created."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{option}: expected a whole number of workers >= 0, got {value!r}; pass an int such as 4")
    return value


def _loopback_if_local(connection: KubeConnection) -> str | None:
    """A local API server (e.g. the embedded one reached through k8s://) runs pods on this machine:
    they reach the scheduler on the loopback. Otherwise None lets Dask pick the outbound address."""
    from urllib.parse import urlsplit

    host = urlsplit(connection.api_client.configuration.host).hostname or ""
    return "127.0.0.1" if host in ("localhost", "::1") or host.startswith("127.") else None


class KubeSparkCluster(Cluster):
    """Dask workers as Kubernetes pods, allocated and replaced the way Spark manages executors.

    >>> cluster = KubeSparkCluster()                      # embedded Kubernetes, no setup
    >>> cluster = KubeSparkCluster(master="k8s://https://host:443", image="ghcr.io/dask/dask")
    >>> client = Client(cluster); cluster.scale(10)       # or cluster.adapt(minimum=0, maximum=50)
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
        self._n_workers = _validate_worker_count(n_workers, "KubeSparkCluster(n_workers=...)")
        overrides = _kwargs_to_overrides(
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
        self.app = AppSpec(
            app_id=uuid.uuid4().hex[:10],
            app_name=self.settings.name or f"dask-{uuid.uuid4().hex[:6]}",
            namespace=self.settings.namespace,
        )
        self.shutdown_on_close = shutdown_on_close
        self._attach = _attach
        if not _attach:  # a bad template or worker setting fails now, before anything is created
            check_executor_pod(app=self.app, settings=self.settings, template=self._pod_template)
        self.connection: KubeConnection | None = None
        self.scheduler: Scheduler | None = None
        self._status_cache: ClusterStatus = ClusterStatus.empty(self.app)
        self.pods_left_after_close = -1  # counted through the API by close()
        self.security = Security()  # replaced by the app's own TLS Security when security.tls is set
        self._tls_secret = False
        self._group_adaptives: dict[str, Any] = {}
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
            from .preflight import check_cluster

            await check_cluster(self)
        if self._attach:
            address = await self._attach_to_running_scheduler()
        elif self.settings.deploy_mode == "cluster":
            from .cluster_mode import start_cluster_mode

            address = await start_cluster_mode(self)
        else:
            address = await self._start_local_scheduler()
        self.scheduler_comm = rpc(address, connection_args=self.security.get_connection_args("client"))
        if self.shutdown_on_close:
            # An unclosed cluster still deletes its pods when collected or at interpreter exit (weakref.finalize
            # runs at exit too); the callback holds only what deletion needs, never self.
            self._pod_reaper = weakref.finalize(self, _reap_pods, self.connection, self.app.namespace, self.app.app_id)
        # Adaptive reads plan/requested/observed each tick: keep the executors' view fresh.
        self.periodic_callbacks["k8s-status"] = PeriodicCallback(self._refresh_status_quietly, STATUS_REFRESH_MS)
        await super()._start()
        self._log(f"KubeSparkCluster {self.app.app_name} ({self.app.app_id}) on {self.connection.master}")
        if self._n_workers:
            await self._scale(self._n_workers)

    async def _start_local_scheduler(self) -> str:
        from .backend.plugin import KubernetesSchedulerBackend

        assert self.connection is not None
        options = self.settings.scheduler
        host = options.host or self.connection.scheduler_host or _loopback_if_local(self.connection)
        plugin = KubernetesSchedulerBackend(
            settings=self.settings, app=self.app, connection=self.connection, pod_template=self._pod_template
        )
        protocol = await self._start_tls() if self.settings.security.tls else None
        self.scheduler = Scheduler(
            security=self.security,
            protocol=protocol,
            host=host,
            port=options.port,
            dashboard_address=options.dashboard_address,
            dashboard=options.dashboard_address is not None,
            plugins=[plugin],
            validate=False,
        )
        await self.scheduler
        return self.scheduler.address

    async def _start_tls(self) -> str:
        """Generate this app's certificates, store them in its Secret for the pods; returns "tls"."""
        from .security import create_tls_secret, generate_tls_material, scheduler_security

        assert self.connection is not None
        material = await asyncio.to_thread(generate_tls_material, self.app.app_id)
        await asyncio.to_thread(create_tls_secret, self.connection.api_client, self.app, material)
        self._tls_secret = True
        self.security = scheduler_security(material)
        return "tls"

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
        from .cluster_mode import find_scheduler_pod, scheduler_address, scheduler_uses_tls

        assert self.connection is not None
        pod = await find_scheduler_pod(self.connection, self.app.namespace, self.app.app_name)
        self.app = AppSpec(app_id=pod["metadata"]["labels"][labels.APP_ID], app_name=self.app.app_name, namespace=self.app.namespace)
        tls = scheduler_uses_tls(pod, self.app)
        if tls:
            await self._attach_tls()
        return scheduler_address(pod, self.app, self.connection, self.settings.scheduler.connect_via, tls)

    async def _attach_tls(self) -> None:
        """A TLS cluster-mode scheduler accepts only this app's certificates: read them from its Secret."""
        from .security import read_tls_material, scheduler_security

        assert self.connection is not None
        material = await asyncio.to_thread(read_tls_material, self.connection.api_client, self.app)
        self.security = scheduler_security(material)
        self._tls_secret = True  # ours to delete when this handle shuts the cluster down

    async def _close(self) -> None:
        if self.status in (Status.closed, Status.closing):
            return
        was_running = self.status == Status.running
        # A cluster that failed to start removes whatever it created, whatever shutdown_on_close says.
        shutdown = self.shutdown_on_close or not was_running
        for adaptive in list(self._group_adaptives.values()):
            adaptive.stop(reason="cluster closing")
        if was_running and shutdown and self.scheduler_comm is not None:
            await self._shutdown_backend()
        if self._tls_secret and shutdown and self.connection is not None:
            from .security import delete_tls_secret

            await self._guarded("deleting the TLS secret",
                                asyncio.to_thread(delete_tls_secret, self.connection.api_client, self.app))
        if shutdown and self.settings.deploy_mode == "cluster" and self.connection is not None and not self._attach_failed():
            from .cluster_mode import delete_scheduler_pod

            await self._guarded("deleting the scheduler pod", delete_scheduler_pod(self))
        await super()._close()
        self.status = Status.closing
        if self.scheduler is not None:
            await self._guarded("closing the scheduler", self.scheduler.close())
        if self.connection is not None and (shutdown or self.connection.embedded is None):
            await self._guarded("closing the Kubernetes connection", asyncio.to_thread(self.connection.close))
        self.status = Status.closed
        if self._pod_reaper is not None and (shutdown or not self.shutdown_on_close):
            self._pod_reaper.detach()  # closed properly (or deliberately left running)

    def _attach_failed(self) -> bool:
        """from_name found no scheduler: there is nothing of ours to delete."""
        return self._attach and self.scheduler_comm is None

    async def _shutdown_backend(self) -> None:
        """Retire workers (their data is not needed any more, so just close them) and delete every pod."""
        result = await self._guarded(
            "deleting the worker pods", self.scheduler_comm.k8s_shutdown(timeout=60)  # type: ignore[union-attr]
        )
        self.pods_left_after_close = result.get("remaining", -1) if result else -1
        if result and result.get("remaining"):
            logger.warning("%d pods of app %s were still present after close", result["remaining"], self.app.app_id)

    @staticmethod
    async def _guarded(what: str, awaitable: Any) -> Any:
        """Shutdown is best effort: log a failing step and let the next one run."""
        try:
            return await awaitable
        except Exception:
            logger.warning("Error while %s", what, exc_info=True)
            return None

    # ------------------------------------------------------------------ scaling
    def scale(self, n: int = 0, group: str = "default", memory: Any = None, cores: Any = None) -> Any:
        """Ask for ``n`` workers (of ``group``); pods are created or retired-then-deleted to match."""
        _validate_worker_count(n, "KubeSparkCluster.scale(n)")
        if memory is not None or cores is not None:
            raise ValueError(
                "KubeSparkCluster.scale(memory=..., cores=...) is not supported: set worker_memory/"
                "worker_cores on the cluster, or use a worker group with its own resources"
            )
        return self.sync(self._scale, n, group)

    async def _scale(self, n: int, group: str = "default") -> None:
        from .preflight import warn_before_scale

        await warn_before_scale(self, n, group)  # logs when the quota cannot hold the new pods
        await self.scheduler_comm.k8s_request_total_executors(n=n, group=group)  # type: ignore[union-attr]
        await self._refresh_status()

    def scale_up(self, n: int, group: str = "default") -> Any:
        return self.scale(n, group=group)

    def scale_down(self, workers: Any) -> Any:
        """Retire these workers (names = executor ids, or addresses), then delete their pods."""
        return self.sync(self._scale_down, list(workers))

    async def _scale_down(self, workers: list[Any]) -> None:
        await self.scheduler_comm.k8s_kill_executors(workers=[str(w) for w in workers])  # type: ignore[union-attr]
        await self._refresh_status()

    # ------------------------------------------------------------------ worker groups and adapt
    def add_worker_group(
        self, name: str, *, cores: float | None = None, memory: str | int | None = None,
        resources: dict[str, float] | None = None, node_selector: dict[str, str] | None = None,
        tolerations: list[dict[str, Any]] | None = None, pod_template: str | dict | None = None,
        env: dict[str, str] | None = None, labels: dict[str, str] | None = None, image: str | None = None,
    ) -> Any:
        """Add a group of workers with their own resources (scale it with ``scale(n, group=name)``)."""
        from .backend.groups import group_settings, validate_group_name

        validate_group_name(name)
        given = {"cores": cores, "memory": memory, "resources": resources, "node-selector": node_selector,
                 "tolerations": tolerations, "env": env, "labels": labels,
                 "pod-template": pod_template if not isinstance(pod_template, dict) else None}
        explicit = {k: v for k, v in given.items() if v is not None}
        worker_overrides = {k.split(".", 1)[1]: v for k, v in self.overrides.items() if k.startswith("worker.")}
        worker_overrides.update(explicit)
        settings = group_settings(self.settings, worker_overrides)  # validates before anything is created
        if image is not None:
            raise ValueError("add_worker_group(image=...): set the image in the group's pod_template instead")
        template = pod_template if isinstance(pod_template, dict) else None
        pod = check_executor_pod(app=self.app, settings=settings, template=template)
        return self.sync(self._add_worker_group, name, worker_overrides, template, settings, pod, explicit)

    async def _add_worker_group(self, name: str, worker_overrides: dict[str, Any], template: dict | None,
                                settings: Settings, pod: dict, explicit: dict[str, Any]) -> None:
        from .preflight import check_worker_group

        await check_worker_group(self, name, pod, settings, explicit)  # LimitRange/quota: before anything exists
        await self.scheduler_comm.k8s_add_worker_group(name=name, worker_overrides=worker_overrides, template=template)  # type: ignore[union-attr]
        self._group_recipes[name] = (settings, template)
        await self._refresh_status()

    def remove_worker_group(self, name: str) -> Any:
        """Retire and delete the group's workers, then forget the group."""
        adaptive = self._group_adaptives.pop(name, None)
        if adaptive is not None:
            adaptive.stop(reason="group removed")
        return self.sync(self._remove_worker_group, name)

    async def _remove_worker_group(self, name: str) -> None:
        await self.scheduler_comm.k8s_remove_worker_group(name=name)  # type: ignore[union-attr]
        self._group_recipes.pop(name, None)
        await self._refresh_status()

    def adapt(self, Adaptive: Any = None, *, minimum: int = 0, maximum: int | float = math.inf,
              group: str = "default", **kwargs: Any) -> Any:
        """Adaptive scaling of one group (default: the default group) between minimum and maximum."""
        from .adaptive import GroupAdaptive, GroupView

        for value, option in ((minimum, "minimum"),):
            _validate_worker_count(value, f"adapt({option}=...)")
        if maximum != math.inf:
            _validate_worker_count(maximum, "adapt(maximum=...)")
        if minimum > maximum:
            raise ValueError(f"adapt(minimum={minimum}, maximum={maximum}): minimum is larger than maximum; "
                             "use minimum <= maximum")
        previous = self._group_adaptives.pop(group, None)
        if previous is not None:
            previous.stop(reason="replaced")
        cls = Adaptive or GroupAdaptive
        adaptive = cls(cluster=GroupView(self, group), minimum=minimum, maximum=maximum, **kwargs)
        self._group_adaptives[group] = adaptive
        if group == "default":
            self._adaptive = adaptive
        if maximum != math.inf:
            self._warn_before_adapt(int(maximum), group)
        return adaptive

    def _warn_before_adapt(self, maximum: int, group: str) -> None:
        """adapt(maximum=...) warns, as scale(n) does, when that many pods of the group cannot fit the quota."""
        from .preflight import group_argument, warn_before_scale

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
        """A text table of executors: id, pod, phase, node, worker address, age, last reason."""
        return format_status_table(self.refresh_status())

    def executors(self) -> list[dict[str, Any]]:
        return [dict(e) for e in self.refresh_status().executors]

    async def _wait_for_workers(self, n_workers: int = 0, timeout: float | None = None) -> None:
        from .waiting import wait_for_workers

        await wait_for_workers(self, n_workers, timeout)

    def logs(self, executor_id: int | str, tail_lines: int | None = None) -> str:
        """The log of one executor pod (via pods/log)."""
        return self.sync(self._executor_log, executor_id, tail_lines)

    async def _executor_log(self, executor_id: int | str, tail_lines: int | None = None) -> str:
        return await self.scheduler_comm.k8s_logs(executor_id=str(executor_id), tail_lines=tail_lines)  # type: ignore[union-attr]

    async def _get_logs(self, cluster: bool = True, scheduler: bool = True, workers: Any = True) -> Logs:
        logs = await super()._get_logs(cluster=cluster, scheduler=scheduler, workers=False)
        if workers:
            status = await self._refresh_status()
            for executor in status.executors:
                if workers is not True and str(executor["id"]) not in {str(w) for w in workers}:
                    continue
                text = await self._guarded("reading a pod log", self._executor_log(executor["id"]))
                logs[executor["pod"]] = Log(text or "")
        return logs

    # ------------------------------------------------------------------ display
    def _repr_html_(self, cluster_status: Any = None) -> str:
        return render_status_html(self._status_cache, name=self.name, dashboard=self.dashboard_link)

    def __repr__(self) -> str:
        counts = self._status_cache.phase_counts()
        text = ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "no pods"
        return f"KubeSparkCluster({self.app.app_name!r}, master={self.settings.master!r}, {text}, status={self.status.name})"


def delete_app_pods_now(connection: KubeConnection, namespace: str, app_id: str, timeout: float = 30) -> int:
    """Synchronously delete every pod of an app and wait until none is listed; returns how many remain.

    For interpreter exit: by then Python's thread pools refuse new work, so the asynchronous
    shutdown path cannot run; this uses the blocking client directly.
    """
    from kubernetes import client as k8s

    core = k8s.CoreV1Api(connection.api_client)
    selector = f"{labels.APP_ID}={app_id}"
    deadline = time.monotonic() + timeout
    while True:
        core.delete_collection_namespaced_pod(namespace, label_selector=selector, _preload_content=False)
        remaining = len(core.list_namespaced_pod(namespace, label_selector=selector).items)
        if remaining == 0 or time.monotonic() > deadline:
            return remaining
        time.sleep(0.2)


def _reap_pods(connection: KubeConnection, namespace: str, app_id: str) -> None:
    """Runs when a cluster that was never closed is garbage-collected or the interpreter exits."""
    try:
        remaining = delete_app_pods_now(connection, namespace, app_id)
        if remaining:
            logger.warning("%d pods of app %s were still present after cleanup", remaining, app_id)
    except Exception as e:
        logger.warning("deleting the pods of app %s failed: %s; run `python -m dask_k8s_backend gc --app %s`",
                       app_id, e, app_id)
    finally:
        with suppress(Exception):
            connection.close()
